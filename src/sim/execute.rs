//! Running a retriever: `POST /v1/retrievers/execute` and
//! `POST /v1/retrievers/{retriever_id}/execute`.
//!
//! With `"stream": true` in the body the answer is an SSE stream (see
//! [`stream`]); otherwise a JSON execution result. Each call
//! gets a fresh `execution_id`.

use http::{Response, StatusCode};
use serde::Serialize;
use serde_json::Value;

use super::config::SimConfig;
use super::executions::TOTAL_STAGES;
use super::respond::{self, SimBody};
use super::state::SimState;
use super::stream::{self, StreamPlan};

#[derive(Debug, Serialize)]
struct ExecuteResponse<'a> {
    execution_id: &'a str,
    execution_mode: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retriever_id: Option<&'a str>,
    namespace: &'a str,
    status: &'a str,
    results: Vec<Document>,
    total_returned: u64,
    stages_completed: u64,
    total_stages: u64,
    duration_ms: u64,
}

#[derive(Debug, Serialize)]
struct Document {
    document_id: String,
    score: f64,
}

/// Whether the body asks for a stream; `Err` for a body that is present but
/// not a JSON object.
pub(crate) fn wants_stream(body: &[u8]) -> Result<bool, &'static str> {
    if body.trim_ascii().is_empty() {
        return Ok(false);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => Ok(fields.get("stream") == Some(&Value::Bool(true))),
        Ok(_) => Err("Request body must be a JSON object"),
        Err(_) => Err("Request body is not valid JSON"),
    }
}

/// Answers an execute request.
pub(crate) fn respond(
    state: &SimState,
    config: &SimConfig,
    namespace: &str,
    retriever_id: Option<&str>,
    body: &[u8],
) -> Response<SimBody> {
    let stream = match wants_stream(body) {
        Ok(stream) => stream,
        Err(message) => return respond::validation(message),
    };
    let execution_id = state.next_execution_id();
    if stream {
        let plan = StreamPlan {
            execution_id,
            namespace: namespace.to_owned(),
            retriever_id: retriever_id.map(str::to_owned),
            interval: config.sse_interval,
            gate: config.sse_gate.clone(),
        };
        return respond::with_type(StatusCode::OK, "text/event-stream", stream::body(plan));
    }
    let results = (1..=3u32)
        .map(|n| Document {
            document_id: format!("doc_{namespace}_{n}"),
            score: 1.0 - f64::from(n) / 10.0,
        })
        .collect();
    respond::json(
        StatusCode::OK,
        &ExecuteResponse {
            execution_id: &execution_id,
            execution_mode: if retriever_id.is_some() {
                "retriever"
            } else {
                "adhoc"
            },
            retriever_id,
            namespace,
            status: "completed",
            results,
            total_returned: 3,
            stages_completed: TOTAL_STAGES,
            total_stages: TOTAL_STAGES,
            duration_ms: 120,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::CONTENT_TYPE;

    #[test]
    fn stream_flag() {
        assert_eq!(wants_stream(b""), Ok(false));
        assert_eq!(wants_stream(br#"{"stream":true}"#), Ok(true));
        assert_eq!(wants_stream(br#"{"stream":"true"}"#), Ok(false));
        assert_eq!(wants_stream(br#"{"inputs":{}}"#), Ok(false));
        assert!(wants_stream(b"[true]").is_err());
        assert!(wants_stream(b"{").is_err());
    }

    #[test]
    fn content_types_and_fresh_ids() {
        let state = SimState::default();
        let config = SimConfig::new("k");
        let sse = respond(&state, &config, "d", None, br#"{"stream":true}"#);
        assert_eq!(sse.headers()[CONTENT_TYPE], "text/event-stream");
        let json = respond(&state, &config, "d", Some("r"), b"{}");
        assert_eq!(json.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(state.next_execution_id(), "exec_1003");
        assert_eq!(
            respond(&state, &config, "d", None, b"nope").status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}
