//! The HTTP/JSON API (axum): the same operations as the native protocol, for curl and for languages
//! without a Meridian SDK. Documented with examples in `docs/api.md`.
//!
//! Every failure is a 4xx/5xx with a JSON body `{"error": {"code", "message", "retryable"}}`, including
//! malformed JSON, oversized bodies and unknown consistency levels — never a bare text rejection.
//! Byte values travel as JSON strings when they are UTF-8, else as `{"base64": "..."}`.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use base64::Engine as _;
use meridian_client::proto::{
    AuthOp, CausalToken, Consistency, ErrorCode, ErrorReply, IdempotencyId, Key, MapPart, MapPartReply, Operation,
    Reply, ReplyBody, RequestV1, SetPart, SetPartReply, TraceContext,
};
use meridian_crdt::{CrdtType, DotContext, Mutation, Value};
use serde::Deserialize;
use serde_json::{json, Value as Json_};
use std::collections::HashMap;
use std::sync::Arc;

use crate::api::node::Node;
use crate::auth::Caller;

/// Header carrying the session's causal token (`mt1....`); the response carries the new one.
pub const TOKEN_HEADER: &str = "x-meridian-token";
/// Header carrying a write's idempotency key (any string up to 128 bytes).
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

mod pipeline;

/// The router.
pub fn router(node: Arc<Node>) -> Router {
    let body_limit = node.config().limits.max_frame_bytes;
    let max_inflight = node.config().limits.max_inflight_requests;
    // Everything but the probes learns who it acts as first (a bad bearer token is refused here).
    let authenticated = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/auth", get(auth_list))
        .route("/v1/auth/whoami", get(whoami))
        .route("/v1/cluster", get(cluster))
        .route("/v1/residency", get(residency))
        .route("/v1/residency/explain/{namespace}/{*key}", get(residency_explain))
        .route("/v1/keys/{namespace}", get(list_keys))
        .route("/v1/kv/{namespace}/{*key}", get(read).post(write).delete(delete))
        .route("/v1/pipeline", axum::routing::post(pipeline::pipeline))
        .route_layer(axum::middleware::from_fn_with_state(node.clone(), authenticate));
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(authenticated)
        .fallback(|| async { ApiError(ErrorReply::new(ErrorCode::BadRequest, "no such endpoint; see docs/api.md")) })
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        // A whole request, body included, is bounded: a client trickling its body cannot hold a
        // task and an in-flight slot for longer.
        .layer(axum::middleware::from_fn_with_state(request_deadline(&node), within_deadline))
        // Bounds HTTP requests in progress, bodies included, before they are read (the node's
        // in-flight limit admits them again once parsed).
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(max_inflight))
        .with_state(node)
}

/// How long one HTTP request may take from its header to its answer.
fn request_deadline(node: &Node) -> std::time::Duration {
    let limits = &node.config().limits;
    std::time::Duration::from_millis(limits.request_timeout_ms + limits.http_header_timeout_ms)
}

async fn within_deadline(
    State(deadline): State<std::time::Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("meridian_http_request_timeouts_total").increment(1);
            let message = format!("the request did not complete within {} ms", deadline.as_millis());
            let mut response = ApiError(ErrorReply::new(ErrorCode::Timeout, message)).into_response();
            *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
            response
        }
    }
}

/// An error as an HTTP response.
pub struct ApiError(pub ErrorReply);

fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest | ErrorCode::Unsupported => StatusCode::BAD_REQUEST,
        ErrorCode::WrongType => StatusCode::CONFLICT,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::QuorumUnavailable | ErrorCode::CausalTimeout | ErrorCode::ShuttingDown => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::ResidencyRefused | ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
    }
}

/// The JSON body of an error: `{"error": {"code", "message", "retryable"}}`.
fn error_json(code: &str, message: &str, retryable: bool) -> Json_ {
    json!({"error": {"code": code, "message": message, "retryable": retryable}})
}

/// The body (without its token) that answers a write, a delete or a read of `key`: alone, as
/// `/v1/kv/…` answers, and as each result of `/v1/pipeline`. A reply of another kind is an
/// internal error.
fn answer_json(body: &ReplyBody, key: &str) -> Result<Json_, ErrorReply> {
    Ok(match body {
        ReplyBody::Written { counter: Some(value) } => json!({"ok": true, "value": value}),
        ReplyBody::Written { counter: None } => json!({"ok": true}),
        ReplyBody::Deleted { existed } => json!({"ok": true, "existed": existed}),
        ReplyBody::Value(Some(value)) => {
            json!({"key": key, "type": value.crdt_type().name(), "value": value_json(value)})
        }
        ReplyBody::Value(None) => error_json("not_found", &format!("key {key} does not exist"), false),
        _ => {
            return Err(ErrorReply::new(
                ErrorCode::Internal,
                "the node answered this operation with a reply of another kind",
            ))
        }
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = error_json(self.0.code.name(), &self.0.message, self.0.code.is_retryable());
        let mut response = (status_of(self.0.code), Json(body)).into_response();
        if self.0.code == ErrorCode::Unauthenticated {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"meridian\""),
            );
        }
        response
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(ErrorReply::new(ErrorCode::BadRequest, message))
}

/// A known endpoint asked with a method it does not serve: 405, with the usual JSON error body.
async fn method_not_allowed() -> Response {
    let error = ErrorReply::new(ErrorCode::BadRequest, "method not allowed; see docs/api.md");
    let mut response = ApiError(error).into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}

/// axum's own path and query rejections are plain text; the API answers every error in JSON.
fn path_of<T>(path: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    path.map(|Path(value)| value).map_err(|e| bad(e.body_text()))
}

fn query_of<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query.map(|Query(value)| value).map_err(|e| bad(e.body_text()))
}

async fn readyz(State(node): State<Arc<Node>>) -> Response {
    match node.unready_reason() {
        None => "ready".into_response(),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    }
}

async fn metrics(State(node): State<Arc<Node>>, Extension(caller): Extension<Caller>) -> Result<String, ApiError> {
    if node.config().auth.metrics_require_token && caller.principal().is_none() {
        let error =
            ErrorReply::new(ErrorCode::Unauthenticated, "/metrics needs a bearer token (auth.metrics_require_token)");
        return Err(ApiError(error));
    }
    if let Ok(status) = node.status() {
        metrics::gauge!("meridian_keys_estimate").set(status.keys_estimate as f64);
        metrics::gauge!("meridian_log_position").set(node.version_vector().get(node.id()) as f64);
    }
    // Disk and memory per space, read at scrape time (RocksDB properties and a directory listing:
    // cheap, and never stale).
    let engine = node.replica().engine().clone();
    let _ = tokio::task::spawn_blocking(move || export_storage_usage(engine.as_ref())).await;
    Ok(crate::metrics_export::prometheus().render())
}

/// Sets the storage gauges: `meridian_storage_bytes{space,kind}` (`sst`, `live_estimate`,
/// `memtable`), `meridian_storage_keys_estimate{space}` and `meridian_storage_wal_bytes`.
fn export_storage_usage(engine: &dyn crate::storage::Engine) {
    for space in crate::storage::Space::ALL {
        let Ok(usage) = engine.space_usage(space) else { continue };
        for (kind, bytes) in
            [("sst", usage.sst_bytes), ("live_estimate", usage.live_bytes_estimate), ("memtable", usage.memtable_bytes)]
        {
            metrics::gauge!("meridian_storage_bytes", "space" => space.name(), "kind" => kind).set(bytes as f64);
        }
        metrics::gauge!("meridian_storage_keys_estimate", "space" => space.name()).set(usage.keys_estimate as f64);
    }
    if let Ok(bytes) = engine.wal_bytes() {
        metrics::gauge!("meridian_storage_wal_bytes").set(bytes as f64);
    }
}

/// `GET /v1/auth/whoami`: who the request acts as and its roles.
async fn whoami(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Result<Json<Json_>, ApiError> {
    auth_reply(&node, caller, headers, AuthOp::WhoAmI).await
}

/// `GET /v1/auth`: users, grants and tokens without secrets (admin on `*`).
async fn auth_list(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Result<Json<Json_>, ApiError> {
    auth_reply(&node, caller, headers, AuthOp::List).await
}

async fn auth_reply(node: &Arc<Node>, caller: Caller, headers: HeaderMap, op: AuthOp) -> Result<Json<Json_>, ApiError> {
    let common = common(caller, &CommonQuery::default(), &headers)?;
    let reply = execute(node, common, Operation::Auth(op)).await?;
    let ReplyBody::Auth(report) = &reply.body else { unreachable!("auth reply") };
    let json =
        serde_json::to_value(report).map_err(|e| ApiError(ErrorReply::new(ErrorCode::Internal, e.to_string())))?;
    Ok(Json(json))
}

#[derive(Deserialize, Default)]
struct CommonQuery {
    consistency: Option<String>,
    #[serde(rename = "type")]
    crdt_type: Option<String>,
    changes_since: Option<String>,
    timeout_ms: Option<u32>,
    /// A part read of a set (`count`, `contains` with `member`, `page` with `after`, `limit`) or,
    /// with `type=map`, of a map (`count`, `field` with `field`, `page`).
    part: Option<String>,
    member: Option<String>,
    field: Option<String>,
    after: Option<String>,
    /// The cursor of a page when it is not UTF-8 (`next` came as `{"base64": …}`).
    after_base64: Option<String>,
    limit: Option<u32>,
}

struct Common {
    consistency: Option<Consistency>,
    token: Option<CausalToken>,
    timeout_ms: u32,
    caller: Caller,
    /// The caller's W3C trace context (`traceparent`).
    trace: Option<TraceContext>,
}

/// Who an HTTPS connection acts as: the client named in its certificate, if it presented one from
/// the cluster CA (set by `crate::api::http_serve` on every request of the connection).
#[derive(Clone, Debug)]
pub struct ConnectionCaller(pub Caller);

/// Learns who a request acts as — the user of its bearer token, else its connection's certificate,
/// else anonymous — and hands it to the handler; a bad token is refused here, `401`.
async fn authenticate(
    State(node): State<Arc<Node>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let caller = match request.headers().get(axum::http::header::AUTHORIZATION) {
        Some(value) => match bearer(&node, value) {
            Ok(caller) => caller,
            Err(refused) => return refused.into_response(),
        },
        None => match request.extensions().get::<ConnectionCaller>() {
            Some(ConnectionCaller(caller)) => caller.clone(),
            None => node.auth().anonymous(),
        },
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

fn bearer(node: &Node, value: &axum::http::HeaderValue) -> Result<Caller, ApiError> {
    let unauthenticated = |message: &str| ApiError(ErrorReply::new(ErrorCode::Unauthenticated, message));
    let value = value.to_str().map_err(|_| unauthenticated("the Authorization header is not ASCII"))?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| unauthenticated("the Authorization header must be `Bearer <token>`"))?;
    node.auth().login(token.trim()).map_err(ApiError)
}

fn common(caller: Caller, query: &CommonQuery, headers: &HeaderMap) -> Result<Common, ApiError> {
    let consistency = query.consistency.as_deref().map(str::parse).transpose().map_err(|e| bad(format!("{e}")))?;
    let token = match headers.get(TOKEN_HEADER) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| bad("x-meridian-token is not ASCII"))?
                .parse::<CausalToken>()
                .map_err(|e| bad(e.to_string()))?,
        ),
    };
    Ok(Common { consistency, token, timeout_ms: query.timeout_ms.unwrap_or(0), caller, trace: traceparent(headers) })
}

/// The request's `traceparent` header. One that does not parse is ignored and the request starts a
/// new trace, as the W3C recommendation asks of a receiver (a tracing mistake never fails a write).
fn traceparent(headers: &HeaderMap) -> Option<TraceContext> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    match value.parse() {
        Ok(trace) => Some(trace),
        Err(e) => {
            tracing::debug!(error = %e, "ignoring a malformed traceparent header");
            None
        }
    }
}

/// The idempotency id of a request's `idempotency-key` header, scoped to the caller's principal (as
/// payment APIs scope keys to the API key): two users who pick the same key for the same write are
/// two writes, not a retry of one — otherwise the second user's acknowledged write would be the
/// first one's reply replayed. Callers without a principal (authentication off) share one space.
fn idempotency_id(headers: &HeaderMap, caller: &Caller) -> Result<Option<IdempotencyId>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_HEADER) else { return Ok(None) };
    scoped_idempotency_id(value.as_bytes(), caller).map(Some)
}

/// The idempotency id of the client-chosen key `value` (1–128 bytes), scoped to `caller`.
fn scoped_idempotency_id(value: &[u8], caller: &Caller) -> Result<IdempotencyId, ApiError> {
    if value.is_empty() || value.len() > 128 {
        return Err(bad("idempotency-key must be 1 to 128 bytes"));
    }
    // The principal's length first, so that (principal, key) pairs cannot run into each other.
    let principal = caller.principal().unwrap_or_default().as_bytes();
    let scoped = [&(principal.len() as u32).to_be_bytes()[..], principal, value].concat();
    // Two stable hashes (with different prefixes) make a 128-bit id, the same in every process.
    let hash = |prefix: u8| crate::layout::stable_hash(&[&[prefix][..], &scoped].concat());
    Ok(IdempotencyId((u128::from(hash(1)) << 64) | u128::from(hash(2))))
}

async fn execute(node: &Arc<Node>, common: Common, op: Operation) -> Result<Reply, ApiError> {
    let request =
        RequestV1 { consistency: common.consistency, causal_token: common.token, timeout_ms: common.timeout_ms, op };
    node.execute_traced(request, common.trace.as_ref(), &common.caller).await.map_err(ApiError)
}

fn key_of(namespace: String, key: String) -> Result<Key, ApiError> {
    Key::new(namespace, key).map_err(|e| bad(e.to_string()))
}

/// Bytes as JSON: a string when UTF-8, else `{"base64": ...}`.
pub fn bytes_json(bytes: &[u8]) -> Json_ {
    match std::str::from_utf8(bytes) {
        Ok(text) => Json_::String(text.to_string()),
        Err(_) => json!({"base64": base64::engine::general_purpose::STANDARD.encode(bytes)}),
    }
}

fn json_bytes(value: &Json_, what: &str) -> Result<Vec<u8>, ApiError> {
    match value {
        Json_::String(text) => Ok(text.as_bytes().to_vec()),
        Json_::Object(map) if map.len() == 1 && map.get("base64").is_some_and(Json_::is_string) => {
            base64::engine::general_purpose::STANDARD
                .decode(map["base64"].as_str().unwrap_or_default())
                .map_err(|e| bad(format!("{what}: invalid base64: {e}")))
        }
        _ => Err(bad(format!("{what} must be a string or {{\"base64\": \"...\"}}"))),
    }
}

/// The text form of a multi-value register's read context (URL-safe base64 of its codec encoding).
pub fn encode_context(context: &DotContext) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(meridian_crdt::codec::encode(context))
}

/// Parses [`encode_context`]'s output.
pub fn decode_context(text: &str) -> Result<DotContext, String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|e| format!("context: invalid base64: {e}"))?;
    meridian_crdt::codec::decode::<DotContext>(&bytes, 1 << 20).map_err(|e| format!("context: {e}"))
}

/// A value as JSON.
pub fn value_json(value: &Value) -> Json_ {
    match value {
        Value::Counter(n) => json!(n),
        Value::Register(v) => v.as_deref().map_or(Json_::Null, bytes_json),
        Value::MvRegister { values, context } => json!({
            "values": values.iter().map(|v| bytes_json(v)).collect::<Vec<_>>(),
            "context": encode_context(context),
        }),
        Value::Set(members) => Json_::Array(members.iter().map(|m| bytes_json(m)).collect()),
        Value::Map(fields) => Json_::Object(fields.iter().map(|(k, v)| (k.clone(), typed_json(v))).collect()),
        Value::Doc { json, heads } => {
            json!({"doc": serde_json::from_str::<Json_>(json).unwrap_or(Json_::Null), "heads": heads})
        }
    }
}

fn typed_json(value: &Value) -> Json_ {
    json!({"type": value.crdt_type().name(), "value": value_json(value)})
}

fn mutation_from_json(body: &Json_, depth: usize) -> Result<Mutation, ApiError> {
    if depth > 8 {
        return Err(bad("map updates nest at most 8 levels"));
    }
    let op = body
        .get("op")
        .and_then(Json_::as_str)
        .ok_or_else(|| bad("the body needs an \"op\" string; see docs/api.md"))?;
    let field = |name: &str| body.get(name).ok_or_else(|| bad(format!("op {op:?} needs \"{name}\"")));
    let int = |name: &str, default: i64| -> Result<i64, ApiError> {
        match body.get(name) {
            None => Ok(default),
            Some(v) => v.as_i64().ok_or_else(|| bad(format!("\"{name}\" must be an integer"))),
        }
    };
    let members = || -> Result<Vec<Vec<u8>>, ApiError> {
        field("members")?
            .as_array()
            .ok_or_else(|| bad("\"members\" must be an array"))?
            .iter()
            .map(|m| json_bytes(m, "a member"))
            .collect()
    };
    let text = |name: &str| -> Result<String, ApiError> {
        field(name)?.as_str().map(str::to_string).ok_or_else(|| bad(format!("\"{name}\" must be a string")))
    };
    Ok(match op {
        "incr" => Mutation::CounterAdd { amount: int("by", 1)? },
        "decr" => Mutation::CounterAdd {
            amount: int("by", 1)?.checked_neg().ok_or_else(|| bad("\"by\" is out of range"))?,
        },
        "set" => Mutation::RegisterSet { value: json_bytes(field("value")?, "value")? },
        "mvset" => {
            let context = match body.get("context") {
                None | Some(Json_::Null) => None,
                Some(Json_::String(text)) => Some(decode_context(text).map_err(bad)?),
                Some(_) => return Err(bad("\"context\" must be the string a read returned")),
            };
            Mutation::MvRegisterSet { value: json_bytes(field("value")?, "value")?, context }
        }
        "sadd" => Mutation::SetAdd { members: members()? },
        "srem" => Mutation::SetRemove { members: members()? },
        "map_update" => Mutation::MapUpdate {
            field: text("field")?,
            mutation: Box::new(mutation_from_json(field("update")?, depth + 1)?),
        },
        "map_remove" => Mutation::MapRemove { field: text("field")? },
        "doc_put" => {
            let json = field("json")?;
            if !json.is_object() {
                return Err(bad("\"json\" must be a JSON object"));
            }
            Mutation::DocPut { json: json.to_string() }
        }
        "doc_apply" => Mutation::DocApply {
            changes: field("changes")?
                .as_array()
                .ok_or_else(|| bad("\"changes\" must be an array of base64 strings"))?
                .iter()
                .map(|c| {
                    let text = c.as_str().ok_or_else(|| bad("each change must be a base64 string"))?;
                    base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| bad(format!("change: invalid base64: {e}")))
                })
                .collect::<Result<_, _>>()?,
        },
        other => {
            return Err(bad(format!(
                "unknown op {other:?} (expected incr, decr, set, mvset, sadd, srem, map_update, map_remove, doc_put or doc_apply)"
            )))
        }
    })
}

fn with_token(reply: &Reply, mut body: Json_) -> Json_ {
    body["token"] = Json_::String(reply.causal_token.to_string());
    body
}

fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<Json_, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError(ErrorReply::new(ErrorCode::TooLarge, format!("the request body exceeds the limit: {e}")))
        } else {
            bad(format!("could not read the body: {e}"))
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("the body is not valid JSON: {e}")))
}

async fn write(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<CommonQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Json_>, ApiError> {
    let (namespace, key) = path_of(path)?;
    let query = query_of(query)?;
    let key = key_of(namespace, key)?;
    let idempotency_id = idempotency_id(&headers, &caller)?;
    let common = common(caller, &query, &headers)?;
    let mutation = mutation_from_json(&parse_body(body)?, 0)?;
    let op = Operation::Write { key, mutation, idempotency_id };
    let reply = execute(&node, common, op).await?;
    Ok(Json(with_token(&reply, answer_json(&reply.body, "").map_err(ApiError)?)))
}

async fn delete(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<CommonQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<Json_>, ApiError> {
    let (namespace, key) = path_of(path)?;
    let query = query_of(query)?;
    let key = key_of(namespace, key)?;
    let idempotency_id = idempotency_id(&headers, &caller)?;
    let common = common(caller, &query, &headers)?;
    let reply = execute(&node, common, Operation::Delete { key, idempotency_id }).await?;
    Ok(Json(with_token(&reply, answer_json(&reply.body, "").map_err(ApiError)?)))
}

async fn read(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<CommonQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (namespace, key) = path_of(path)?;
    let query = query_of(query)?;
    let key = key_of(namespace, key)?;
    let common = common(caller, &query, &headers)?;
    if let Some(since) = &query.changes_since {
        let since_heads = since.split(',').filter(|h| !h.is_empty()).map(str::to_string).collect();
        let reply = execute(&node, common, Operation::DocChanges { key, since_heads }).await?;
        let ReplyBody::DocChanges { changes, heads } = &reply.body else { unreachable!("doc changes reply") };
        let changes: Vec<String> =
            changes.iter().map(|c| base64::engine::general_purpose::STANDARD.encode(c)).collect();
        return Ok(Json(with_token(&reply, json!({"changes": changes, "heads": heads}))).into_response());
    }
    if let Some(part) = &query.part {
        let body = match query.crdt_type.as_deref() {
            Some("map") => map_part(&node, common, key, part, &query).await?,
            None | Some("set") => set_part(&node, common, key, part, &query).await?,
            Some(other) => {
                return Err(bad(format!("part reads are of sets and maps (type=set or map), not {other:?}")))
            }
        };
        return Ok(Json(body).into_response());
    }
    let expected =
        query.crdt_type.as_deref().map(str::parse::<CrdtType>).transpose().map_err(|e| bad(e.to_string()))?;
    let display = key.to_string();
    let reply = execute(&node, common, Operation::Read { key, expected }).await?;
    let body = Json(with_token(&reply, answer_json(&reply.body, &display).map_err(ApiError)?));
    match &reply.body {
        ReplyBody::Value(Some(_)) => Ok(body.into_response()),
        _ => Ok((StatusCode::NOT_FOUND, body).into_response()),
    }
}

/// `GET …?part=` of a set: the body (with the session token).
async fn set_part(
    node: &Arc<Node>,
    common: Common,
    key: Key,
    part: &str,
    query: &CommonQuery,
) -> Result<Json_, ApiError> {
    let part = match part {
        "count" => SetPart::Count,
        "contains" => {
            let member = query.member.as_ref().ok_or_else(|| bad("part=contains needs member=<member>"))?;
            SetPart::Contains(vec![member.as_bytes().to_vec()])
        }
        "page" => {
            let after = match (&query.after, &query.after_base64) {
                (Some(_), Some(_)) => return Err(bad("give after or after_base64, not both")),
                (Some(text), None) => Some(text.as_bytes().to_vec()),
                (None, Some(b64)) => Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|e| bad(format!("after_base64: {e}")))?,
                ),
                (None, None) => None,
            };
            SetPart::Page { after, limit: query.limit.unwrap_or(100) }
        }
        other => return Err(bad(format!("part must be count, contains or page, not {other:?}"))),
    };
    let reply = execute(node, common, Operation::ReadSet { key, part }).await?;
    let body = match &reply.body {
        ReplyBody::SetPart(SetPartReply::Count(n)) => json!({"count": n}),
        ReplyBody::SetPart(SetPartReply::Contains(found)) => {
            json!({"member": query.member, "contains": found.first().copied().unwrap_or(false)})
        }
        ReplyBody::SetPart(SetPartReply::Page { members, next }) => json!({
            "members": members.iter().map(|m| bytes_json(m)).collect::<Vec<_>>(),
            "next": next.as_deref().map(bytes_json),
        }),
        other => {
            let message = format!("a set part read answered with {other:?}");
            return Err(ApiError(ErrorReply::new(ErrorCode::Internal, message)));
        }
    };
    Ok(with_token(&reply, body))
}

/// `GET …?type=map&part=` of a map: the body (with the session token).
async fn map_part(
    node: &Arc<Node>,
    common: Common,
    key: Key,
    part: &str,
    query: &CommonQuery,
) -> Result<Json_, ApiError> {
    let part = match part {
        "count" => MapPart::Count,
        "field" => {
            let field = query.field.as_ref().ok_or_else(|| bad("part=field needs field=<name>"))?;
            MapPart::Fields(vec![field.clone()])
        }
        "page" => {
            if query.after_base64.is_some() {
                return Err(bad("a map's page cursor is a field name: give after"));
            }
            MapPart::Page { after: query.after.clone(), limit: query.limit.unwrap_or(100) }
        }
        other => return Err(bad(format!("part must be count, field or page, not {other:?}"))),
    };
    let reply = execute(node, common, Operation::ReadMap { key, part }).await?;
    let body = match &reply.body {
        ReplyBody::MapPart(MapPartReply::Count(n)) => json!({"count": n}),
        ReplyBody::MapPart(MapPartReply::Fields(values)) => {
            let value = values.first().cloned().flatten();
            json!({
                "field": query.field,
                "type": value.as_ref().map(|v| v.crdt_type().name()),
                "value": value.as_ref().map(value_json),
            })
        }
        ReplyBody::MapPart(MapPartReply::Page { fields, next }) => json!({
            "fields": fields.iter().map(|(name, value)| json!({
                "field": name, "type": value.crdt_type().name(), "value": value_json(value),
            })).collect::<Vec<_>>(),
            "next": next,
        }),
        other => {
            let message = format!("a map part read answered with {other:?}");
            return Err(ApiError(ErrorReply::new(ErrorCode::Internal, message)));
        }
    };
    Ok(with_token(&reply, body))
}

async fn list_keys(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<Json_>, ApiError> {
    let namespace = path_of(path)?;
    let query = query_of(query)?;
    let limit = match query.get("limit") {
        None => 100,
        Some(l) => l.parse::<u32>().map_err(|_| bad("limit must be a positive integer"))?,
    };
    let timeout_ms = query.get("timeout_ms").map(|t| t.parse::<u32>()).transpose();
    let timeout_ms = timeout_ms.map_err(|_| bad("timeout_ms must be a non-negative integer"))?;
    let common_query =
        CommonQuery { consistency: query.get("consistency").cloned(), timeout_ms, ..CommonQuery::default() };
    let common = common(caller, &common_query, &headers)?;
    let op = Operation::ListKeys {
        namespace,
        prefix: query.get("prefix").cloned().unwrap_or_default(),
        start_after: query.get("after").cloned(),
        limit,
    };
    let reply = execute(&node, common, op).await?;
    let ReplyBody::Keys { keys, next } = &reply.body else { unreachable!("keys reply") };
    let keys: Vec<Json_> = keys.iter().map(|k| json!({"key": k.name, "type": k.crdt_type.name()})).collect();
    Ok(Json(with_token(&reply, json!({"keys": keys, "next": next}))))
}

/// The region as this node sees it (`meridian cluster status` as JSON); node ids as strings, since
/// they are 64-bit and JSON numbers are not.
async fn cluster(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Result<Json<Json_>, ApiError> {
    let common = common(caller, &CommonQuery::default(), &headers)?;
    let reply = execute(&node, common, Operation::Cluster(meridian_client::proto::ClusterOp::Status)).await?;
    let ReplyBody::Cluster(report) = &reply.body else { unreachable!("cluster reply") };
    let mut json =
        serde_json::to_value(report).map_err(|e| ApiError(ErrorReply::new(ErrorCode::Internal, e.to_string())))?;
    if let Some(members) = json.get_mut("members").and_then(Json_::as_array_mut) {
        for (member, report) in members.iter_mut().zip(&report.members) {
            member["id"] = json!(report.id.to_string());
        }
    }
    Ok(Json(json))
}

/// `GET /v1/residency`: the rules, their version, this node's purges/backfills and counters.
async fn residency(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Result<Json<Json_>, ApiError> {
    residency_reply(&node, caller, headers, meridian_client::proto::ResidencyOp::List).await
}

/// `GET /v1/residency/explain/{namespace}/{key}`: which rule a key matches and where it may live.
async fn residency_explain(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Json<Json_>, ApiError> {
    let (namespace, key) = path_of(path)?;
    let key = key_of(namespace, key)?;
    residency_reply(&node, caller, headers, meridian_client::proto::ResidencyOp::Explain { key }).await
}

async fn residency_reply(
    node: &Arc<Node>,
    caller: Caller,
    headers: HeaderMap,
    op: meridian_client::proto::ResidencyOp,
) -> Result<Json<Json_>, ApiError> {
    let common = common(caller, &CommonQuery::default(), &headers)?;
    let reply = execute(node, common, Operation::Residency(op)).await?;
    let ReplyBody::Residency(report) = &reply.body else { unreachable!("residency reply") };
    let json =
        serde_json::to_value(report).map_err(|e| ApiError(ErrorReply::new(ErrorCode::Internal, e.to_string())))?;
    Ok(Json(json))
}

async fn status(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Result<Json<Json_>, ApiError> {
    let storage_common = common(caller.clone(), &CommonQuery::default(), &headers)?;
    let census_common = common(caller.clone(), &CommonQuery::default(), &headers)?;
    let common = common(caller, &CommonQuery::default(), &headers)?;
    let reply = execute(&node, common, Operation::Status).await?;
    let ReplyBody::Status(status) = reply.body else { unreachable!("status reply") };
    let storage = execute(&node, storage_common, Operation::Storage).await?;
    let ReplyBody::Storage(storage) = storage.body else { unreachable!("storage reply") };
    let census = execute(&node, census_common, Operation::DataCensus).await?;
    let ReplyBody::DataCensus(census) = census.body else { unreachable!("census reply") };
    Ok(Json(json!({
        "node_id": status.node_id.to_string(),
        "name": status.name,
        "region": status.region,
        "zone": status.zone,
        "version": status.version,
        "uptime_s": status.uptime_s,
        "keys_estimate": status.keys_estimate,
        "log_entries": status.log_entries,
        "version_vector": status.version_vector.iter().map(|(n, s)| (n.to_string(), json!(s))).collect::<serde_json::Map<_, _>>(),
        "durability": status.durability,
        "client_connections": status.client_connections,
        "storage": storage,
        "census": census,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(key: &str, caller: &Caller) -> IdempotencyId {
        let mut headers = HeaderMap::new();
        headers.insert(IDEMPOTENCY_HEADER, key.parse().unwrap());
        idempotency_id(&headers, caller).ok().flatten().expect("a valid idempotency key")
    }

    #[test]
    fn idempotency_keys_are_scoped_to_the_principal() {
        let token = |user: &str| Caller::Token { user: user.into(), id: "0".into() };
        let cert = |name: &str| Caller::Certificate { name: name.into(), fingerprint: "f".into() };
        // The same principal retrying: one id, however it authenticates.
        assert_eq!(id("order-1", &token("alice")), id("order-1", &token("alice")));
        assert_eq!(id("order-1", &token("alice")), id("order-1", &cert("alice")));
        // Two principals picking the same key: two writes.
        assert_ne!(id("order-1", &token("alice")), id("order-1", &token("bob")));
        assert_ne!(id("order-1", &token("alice")), id("order-1", &Caller::Open));
        // The principal and the key cannot run into each other.
        assert_ne!(id("b-order", &token("alice")), id("order", &token("aliceb-")));
        assert_ne!(id("x", &token("ab")), id("bx", &token("a")));
        // Without a principal (authentication off), one shared space, stable across processes.
        assert_eq!(id("order-1", &Caller::Open), id("order-1", &Caller::Open));
        let empty = HeaderMap::new();
        assert!(idempotency_id(&empty, &Caller::Open).ok().flatten().is_none());
    }
}
