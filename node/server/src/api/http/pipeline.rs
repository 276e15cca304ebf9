//! `POST /v1/pipeline`: a pipeline (`Operation::Pipeline`, `api/pipeline.rs`) over HTTP — many
//! keyed operations in one request, one result each, in order, and one token for them all.
//!
//! The body is `{"ops": [...]}`; each element is a write body of `POST /v1/kv` with its `"key"`
//! (`"namespace/key"`) beside `"op"`, or `{"op": "get", "key": …, "type"?: …}`, or
//! `{"op": "del", "key": …}`; a write or delete may carry an `"idempotency_key"` (scoped to the
//! caller as the `idempotency-key` header is). An element that does not parse refuses the whole
//! request (400, naming it) before anything runs.

use super::*;

/// `POST /v1/pipeline`.
pub(super) async fn pipeline(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<CommonQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Json_>, ApiError> {
    let query = query_of(query)?;
    let body = parse_body(body)?;
    let elements = body
        .get("ops")
        .and_then(Json_::as_array)
        .ok_or_else(|| bad("the body needs an \"ops\" array; see docs/api.md"))?;
    let mut keys = Vec::with_capacity(elements.len());
    let mut ops = Vec::with_capacity(elements.len());
    for (index, element) in elements.iter().enumerate() {
        let op = op_of(element, &caller).map_err(|ApiError(e)| {
            ApiError(ErrorReply::new(e.code, format!("operation {index}: {}; nothing ran", e.message)))
        })?;
        keys.push(element["key"].as_str().unwrap_or_default().to_string());
        ops.push(op);
    }
    let common = common(caller, &query, &headers)?;
    let reply = execute(&node, common, Operation::Pipeline(ops)).await?;
    let ReplyBody::Pipeline(answers) = &reply.body else {
        return Err(ApiError(ErrorReply::new(ErrorCode::Internal, "a pipeline was not answered as one")));
    };
    let results: Vec<Json_> = answers.iter().zip(&keys).map(|(answer, key)| result_json(answer, key)).collect();
    Ok(Json(with_token(&reply, json!({ "results": results }))))
}

/// One element of `"ops"` as an operation.
fn op_of(element: &Json_, caller: &Caller) -> Result<Operation, ApiError> {
    let key: Key = element
        .get("key")
        .and_then(Json_::as_str)
        .ok_or_else(|| bad("needs a \"key\" string (namespace/key)"))?
        .parse()
        .map_err(|e: meridian_client::proto::KeyError| bad(e.to_string()))?;
    let idempotency_id = match element.get("idempotency_key") {
        None => None,
        Some(Json_::String(text)) => Some(scoped_idempotency_id(text.as_bytes(), caller)?),
        Some(_) => return Err(bad("\"idempotency_key\" must be a string")),
    };
    match element.get("op").and_then(Json_::as_str) {
        Some("get") => {
            let expected = match element.get("type") {
                None => None,
                Some(Json_::String(name)) => Some(name.parse::<CrdtType>().map_err(|e| bad(e.to_string()))?),
                Some(_) => return Err(bad("\"type\" must be a string")),
            };
            Ok(Operation::Read { key, expected })
        }
        Some("del") => Ok(Operation::Delete { key, idempotency_id }),
        _ => Ok(Operation::Write { key, mutation: mutation_from_json(element, 0)?, idempotency_id }),
    }
}

/// One operation's result, shaped as the single request's body would be (without its token).
fn result_json(answer: &Result<ReplyBody, ErrorReply>, key: &str) -> Json_ {
    let failed = |e: &ErrorReply| error_json(e.code.name(), &e.message, e.code.is_retryable());
    match answer {
        Ok(body) => answer_json(body, key).unwrap_or_else(|e| failed(&e)),
        Err(e) => failed(e),
    }
}
