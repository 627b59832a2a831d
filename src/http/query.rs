//! The query routes of contract section 9: `GET /v1/customers/{crm_id}` and
//! `GET /v1/cookies/{cookie_id}`, `?limit=N`. They exist only when
//! `http.query_token` is set, and every request must carry
//! `Authorization: Bearer <token>`. docs/openapi.yaml describes them.
//!
//! A query reads a RocksDB snapshot of the committed state on a blocking
//! thread: it sees whole batches only and holds no lock the pipeline waits
//! on; at most half the cores compute queries at once.

use std::fmt;
use std::sync::{Arc, OnceLock};

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use percent_encoding::percent_decode_str;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tracing::warn;

use crate::config::Config;
use crate::engine::query::{Answer, CookieHop, Queries, Subject, DEFAULT_LIMIT, MAX_LIMIT};
use crate::engine::routing::Stage;
use crate::state::Reader;

use super::forward::{self, segment, HOPS_HEADER, MAX_HOPS};
use super::placement::Placement;

/// What the query routes need: the token (as a digest: the plain token is
/// not kept here), the scoring settings, and the state once it is open.
#[derive(Clone)]
pub struct QueryState {
    /// SHA-256 of the token; `None`: no query routes.
    token_digest: Option<[u8; 32]>,
    queries: Arc<Queries>,
    reader: Arc<OnceLock<Reader>>,
    /// Scaled out: the partitions held here and their owners elsewhere,
    /// in place of `reader`.
    placement: Arc<OnceLock<Arc<Placement>>>,
    /// Queries computed at once: at most half the cores, so that a flood
    /// of queries queues here rather than taking the pipeline's CPU.
    running: Arc<Semaphore>,
}

impl fmt::Debug for QueryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryState")
            .field("enabled", &self.token_digest.is_some())
            .field("state_open", &self.reader.get().is_some())
            .finish()
    }
}

impl QueryState {
    pub fn from_config(config: &Config) -> QueryState {
        let token = &config.http.query_token;
        QueryState {
            token_digest: token.is_set().then(|| digest(token.expose().as_bytes())),
            queries: Arc::new(Queries::from_config(config)),
            reader: Arc::new(OnceLock::new()),
            placement: Arc::new(OnceLock::new()),
            running: Arc::new(Semaphore::new(query_threads())),
        }
    }

    /// Serves queries from `reader` from now on; until then they answer
    /// 503. The first reader stays: a pipeline opens its state once.
    pub fn open(&self, reader: Reader) {
        let _ = self.reader.set(reader);
    }

    /// Scaled out: serves queries from the partitions `placement` holds,
    /// forwarding the others to their owners.
    pub fn place(&self, placement: Arc<Placement>) {
        let _ = self.placement.set(placement);
    }

    pub fn enabled(&self) -> bool {
        self.token_digest.is_some()
    }

    /// Whether the request carries exactly one `Authorization: Bearer`
    /// header with the token. The digests are compared in constant time,
    /// so neither the token's bytes nor its length leak through timing.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.token_digest else {
            return false;
        };
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return false;
        };
        let Some(token) = bearer(value.as_bytes()) else {
            return false;
        };
        constant_time_eq(&digest(token), expected)
    }
}

/// The query routes, or none when no token is configured.
pub fn routes(state: &QueryState) -> Router {
    if !state.enabled() {
        return Router::new();
    }
    Router::new()
        .route(
            "/v1/customers/{crm_id}",
            get(customer).fallback(not_allowed),
        )
        .route("/v1/cookies/{cookie_id}", get(cookie).fallback(not_allowed))
        .with_state(state.clone())
}

async fn customer(
    State(q): State<QueryState>,
    headers: HeaderMap,
    uri: Uri,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    lookup(q, &headers, &uri, id, Subject::Customer).await
}

async fn cookie(
    State(q): State<QueryState>,
    headers: HeaderMap,
    uri: Uri,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    lookup(q, &headers, &uri, id, Subject::Cookie).await
}

async fn lookup(
    q: QueryState,
    headers: &HeaderMap,
    uri: &Uri,
    id: Result<Path<String>, PathRejection>,
    subject: fn(String) -> Subject,
) -> Response {
    if !q.authorized(headers) {
        return unauthorized();
    }
    // Axum percent-decodes the segment; a rejection is bytes that are not
    // UTF-8 once decoded, which no id can be.
    let Ok(Path(id)) = id else {
        return error(
            StatusCode::BAD_REQUEST,
            "the id is not UTF-8 once percent-decoded",
        );
    };
    let limit = match parse_limit(uri.query()) {
        Ok(n) => n,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let subject = subject(id);
    if let Some(placement) = q.placement.get().cloned() {
        let asked = Asked {
            limit,
            authorization: headers.get(header::AUTHORIZATION).cloned(),
            hops: hops(headers),
        };
        return scaled::lookup(&q, &placement, subject, &asked).await;
    }
    let Some(reader) = q.reader.get().cloned() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the state is not open yet");
    };
    let answered = q
        .compute(move |queries| queries.answer(&reader.snapshot(), &subject, limit))
        .await;
    answer_response(answered)
}

impl QueryState {
    /// Runs `query` on a blocking thread, at most `running` at once.
    async fn compute<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Queries) -> Result<T, crate::state::StateError> + Send + 'static,
    ) -> Result<T, Response> {
        let queries = Arc::clone(&self.queries);
        // The semaphore is never closed.
        let Ok(_permit) = self.running.acquire().await else {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is stopping",
            ));
        };
        match tokio::task::spawn_blocking(move || query(&queries)).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => {
                warn!(error = %e, "query failed");
                Err(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the state could not be read",
                ))
            }
            Err(_) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, "the query failed")),
        }
    }
}

fn answer_response(answered: Result<Option<Answer>, Response>) -> Response {
    match answered {
        Ok(Some(answer)) => json(StatusCode::OK, answer.to_json()),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "no state for this id (never seen, or erased)",
        ),
        Err(response) => response,
    }
}

/// What a query asked besides its subject, passed on when it is forwarded.
struct Asked {
    limit: usize,
    authorization: Option<HeaderValue>,
    /// Times it was forwarded to get here.
    hops: u8,
}

fn hops(headers: &HeaderMap) -> u8 {
    headers
        .get(HOPS_HEADER)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0)
}

/// Queries of a scaled-out instance: a cookie's identity partition
/// resolves it to its customer, whose customer partition answers; either
/// may be here or at the instance the group assigned it to.
mod scaled {
    use super::*;

    pub(super) async fn lookup(
        q: &QueryState,
        placement: &Placement,
        subject: Subject,
        asked: &Asked,
    ) -> Response {
        match subject {
            Subject::Customer(crm_id) => customer(q, placement, crm_id, None, asked).await,
            Subject::Cookie(cookie_id) => cookie(q, placement, cookie_id, asked).await,
        }
    }

    async fn cookie(
        q: &QueryState,
        placement: &Placement,
        cookie_id: String,
        asked: &Asked,
    ) -> Response {
        let p = placement.partition_of(&cookie_id);
        let Some(reader) = placement.local(Stage::Identity, p) else {
            let path = format!("/v1/cookies/{}?limit={}", segment(&cookie_id), asked.limit);
            return forward(placement, Stage::Identity, p, &path, asked).await;
        };
        let (id, limit) = (cookie_id.clone(), asked.limit);
        let hop = q
            .compute(move |queries| queries.cookie_hop(&reader.snapshot(), &id, limit))
            .await;
        match hop {
            Ok(CookieHop::Answered(answer)) => answer_response(Ok(answer)),
            Ok(CookieHop::Customer(crm_id)) => {
                customer(q, placement, crm_id, Some(cookie_id), asked).await
            }
            Err(response) => response,
        }
    }

    async fn customer(
        q: &QueryState,
        placement: &Placement,
        crm_id: String,
        via_cookie: Option<String>,
        asked: &Asked,
    ) -> Response {
        let p = placement.partition_of(&crm_id);
        if let Some(reader) = placement.local(Stage::Customer, p) {
            let limit = asked.limit;
            let answered = q
                .compute(move |queries| {
                    queries.customer_answer(
                        &reader.snapshot(),
                        &crm_id,
                        via_cookie.as_deref(),
                        limit,
                    )
                })
                .await;
            return answer_response(answered);
        }
        let path = format!("/v1/customers/{}?limit={}", segment(&crm_id), asked.limit);
        let (status, body) = match forwarded(placement, Stage::Customer, p, &path, asked).await {
            Ok(answer) => answer,
            Err(response) => return response,
        };
        match (status, via_cookie) {
            // The customer's answer, asked about one of its cookies: the
            // cookie first, as the contract orders the fields.
            (StatusCode::OK, Some(cookie_id)) => match body.strip_prefix('{') {
                Some(rest) => {
                    let cookie = serde_json::Value::from(cookie_id).to_string();
                    json(status, format!("{{\"cookie_id\":{cookie},{rest}"))
                }
                None => json(status, body),
            },
            _ => json(status, body),
        }
    }

    async fn forward(
        placement: &Placement,
        stage: Stage,
        p: i32,
        path: &str,
        asked: &Asked,
    ) -> Response {
        match forwarded(placement, stage, p, path, asked).await {
            Ok((status, body)) => json(status, body),
            Err(response) => response,
        }
    }

    /// The answer of the owner of `stage`'s partition `p`, or the 503 that
    /// says why there is none (the partition is moving, or its owner is
    /// unreachable: asking again soon is right either way).
    async fn forwarded(
        placement: &Placement,
        stage: Stage,
        p: i32,
        path: &str,
        asked: &Asked,
    ) -> Result<(StatusCode, String), Response> {
        let unavailable = |why: String| error(StatusCode::SERVICE_UNAVAILABLE, &why);
        if asked.hops >= MAX_HOPS {
            return Err(unavailable(format!(
                "{} partition {p} is moving between instances: ask again",
                stage.name()
            )));
        }
        let Some(owner) = placement.owner(stage, p) else {
            return Err(unavailable(format!(
                "{} partition {p} has no reachable owner now (moving, or its instance \
                 advertises no address): ask again",
                stage.name()
            )));
        };
        let auth = asked.authorization.as_ref();
        forward::get(&owner, path, auth, asked.hops + 1)
            .await
            .map_err(|e| {
                warn!(error = %e, "forwarding a query failed");
                unavailable(format!(
                    "the owner of {} partition {p} did not answer",
                    stage.name()
                ))
            })
    }
}

/// Another method on a query route: 405, after the same authorization as
/// a GET (an unauthorized caller learns nothing, not even the methods).
async fn not_allowed(State(q): State<QueryState>, headers: HeaderMap) -> Response {
    if !q.authorized(&headers) {
        return unauthorized();
    }
    let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "only GET is allowed here");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

/// Half the cores, at least one.
fn query_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Any path no route serves.
pub async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such route")
}

/// `limit` of the query string: 1 to 1000, default 20; given once at most.
/// Other parameters are ignored. Names and values are percent-decoded, as
/// any HTTP client may encode them (`limit=%32` is 2).
fn parse_limit(query: Option<&str>) -> Result<usize, &'static str> {
    let mut given = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode_str(key).decode_utf8().ok().as_deref() != Some("limit") {
            continue;
        }
        if given.replace(value).is_some() {
            return Err("limit is given more than once");
        }
    }
    let Some(value) = given else {
        return Ok(DEFAULT_LIMIT);
    };
    let value = percent_decode_str(value)
        .decode_utf8()
        .map_err(|_| "limit is not UTF-8 once percent-decoded")?;
    // Digits only: `parse` would also take a sign.
    let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    value
        .parse::<usize>()
        .ok()
        .filter(|n| digits && (1..=MAX_LIMIT).contains(n))
        .ok_or("limit must be a whole number from 1 to 1000")
}

/// The credentials of `Bearer <token>` (the scheme is case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    let token = rest.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer") && !token.is_empty()).then_some(token)
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// 401 with no detail: the same answer for a missing, malformed or wrong
/// token.
fn unauthorized() -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, "unauthorized");
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn error(status: StatusCode, message: &str) -> Response {
    json(status, serde_json::json!({ "error": message }).to_string())
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_defaults_and_bounds() {
        assert_eq!(parse_limit(None), Ok(20));
        assert_eq!(parse_limit(Some("")), Ok(20));
        assert_eq!(parse_limit(Some("x=1&limit=1000")), Ok(1000));
        assert_eq!(parse_limit(Some("limit=1")), Ok(1));
        assert_eq!(parse_limit(Some("limit=%32")), Ok(2));
        assert_eq!(parse_limit(Some("%6Cimit=1%30")), Ok(10));
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=",
            "limit",
            "limit=a",
            "limit=-1",
            "limit=+5",
            "limit=1&limit=2",
            "limit=1&%6Cimit=2",
            "limit=%2B5",
            "limit=%FF",
        ] {
            assert!(parse_limit(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_a_bearer_with_the_token_is_authorized() {
        let mut config = Config::default();
        let token = "0123456789abcdef-token";
        config.http.query_token =
            toml::from_str::<Config>(&format!("[http]\nquery_token = {token:?}\n"))
                .unwrap()
                .http
                .query_token;
        let q = QueryState::from_config(&config);
        let with = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            }
            q.authorized(&h)
        };
        assert!(with(&[&format!("Bearer {token}")]));
        assert!(with(&[&format!("bearer {token}")]));
        assert!(!with(&[]));
        assert!(!with(&[token]));
        assert!(!with(&[&format!("Basic {token}")]));
        assert!(!with(&[&format!("Bearer {token}x")]));
        assert!(!with(&["Bearer "]));
        assert!(!with(&[
            &format!("Bearer {token}"),
            &format!("Bearer {token}")
        ]));
        assert!(!format!("{q:?}").contains(token));
        let off = QueryState::from_config(&Config::default());
        assert!(!off.enabled());
        assert!(!off.authorized(&HeaderMap::new()));
    }
}
