{{/*
The chart name, overridable.
*/}}
{{- define "pretext.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of every resource: <release>-<chart>, or the release name when
it already contains the chart name; at most 63 characters (a DNS label).
*/}}
{{- define "pretext.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pretext.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every resource.
*/}}
{{- define "pretext.labels" -}}
helm.sh/chart: {{ include "pretext.chart" . }}
{{ include "pretext.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: stream-processor
{{- end }}

{{/*
Selector labels: stable across upgrades (a StatefulSet's selector is immutable).
*/}}
{{- define "pretext.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pretext.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The headless Service governing the StatefulSet: pod <name>-<ordinal> is
<name>-<ordinal>.<this>.<namespace>.svc.
*/}}
{{- define "pretext.headlessName" -}}
{{- printf "%s-headless" (include "pretext.fullname" .) }}
{{- end }}

{{- define "pretext.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pretext.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pretext.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
A TOML float: Go prints the float 1.0 as "1", which TOML reads as an integer.
*/}}
{{- define "pretext.float" -}}
{{- $v := printf "%g" (float64 .) }}
{{- if or (contains "." $v) (contains "e" $v) (contains "n" $v) }}{{ $v }}{{ else }}{{ $v }}.0{{ end }}
{{- end }}

{{/*
Whole seconds of a pretext duration ("250ms", "90s", "5m", "1h", "7d"),
rounded up. Fails on anything else, naming the value.
*/}}
{{- define "pretext.durationSeconds" -}}
{{- $s := toString . }}
{{- if not (regexMatch "^[0-9]+(ms|s|m|h|d)$" $s) }}
{{- fail (printf "config.kafka.shutdown_timeout: invalid duration %q (expected a whole number and a unit: ms, s, m, h, d)" $s) }}
{{- end }}
{{- $n := regexFind "^[0-9]+" $s | int64 }}
{{- $unit := regexFind "[a-z]+$" $s }}
{{- if eq $unit "ms" }}{{ div (add $n 999) 1000 }}
{{- else if eq $unit "s" }}{{ $n }}
{{- else if eq $unit "m" }}{{ mul $n 60 }}
{{- else if eq $unit "h" }}{{ mul $n 3600 }}
{{- else }}{{ mul $n 86400 }}
{{- end }}
{{- end }}

{{/*
The label selector of pretext's series in alert expressions.
*/}}
{{- define "pretext.metricSelector" -}}
{{- if .Values.prometheusRule.selector }}
{{- .Values.prometheusRule.selector }}
{{- else }}
{{- printf "namespace=%q,service=%q" .Release.Namespace (include "pretext.fullname" .) }}
{{- end }}
{{- end }}

{{/*
Where the TLS Secret is mounted.
*/}}
{{- define "pretext.tlsDir" -}}/etc/pretext/tls{{- end }}

{{/*
The librdkafka pass-through map: config.kafka.client, then what `security`
sets (which wins).
*/}}
{{- define "pretext.kafkaClient" -}}
{{- $client := deepCopy (.Values.config.kafka.client | default dict) }}
{{- $s := .Values.security }}
{{- $dir := include "pretext.tlsDir" . }}
{{- if $s.protocol }}
{{- $_ := set $client "security.protocol" $s.protocol }}
{{- end }}
{{- if $s.sasl.enabled }}
{{- $_ := set $client "sasl.mechanism" $s.sasl.mechanism }}
{{- end }}
{{- if $s.tls.enabled }}
{{- if $s.tls.caKey }}
{{- $_ := set $client "ssl.ca.location" (printf "%s/%s" $dir $s.tls.caKey) }}
{{- end }}
{{- if $s.tls.certKey }}
{{- $_ := set $client "ssl.certificate.location" (printf "%s/%s" $dir $s.tls.certKey) }}
{{- end }}
{{- if $s.tls.keyKey }}
{{- $_ := set $client "ssl.key.location" (printf "%s/%s" $dir $s.tls.keyKey) }}
{{- end }}
{{- end }}
{{- toJson $client }}
{{- end }}
