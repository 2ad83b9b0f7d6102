//! The Server-Sent Events body of a streamed execution: one `stage` event
//! per stage as it "finishes", then one `complete` event.
//!
//! Events are produced lazily as the connection polls the body, each as its
//! own frame, so a proxy that buffers whole bodies shows up in tests: the
//! first event is on the wire while the later ones are still waiting on
//! [`SimConfig::sse_interval`](super::SimConfig::sse_interval) or
//! [`SimConfig::sse_gate`](super::SimConfig::sse_gate).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use serde::Serialize;
use tokio::sync::Semaphore;

use super::executions::TOTAL_STAGES;
use super::respond::SimBody;

/// The stages of a simulated retriever, in order.
pub(crate) const STAGES: [&str; TOTAL_STAGES as usize] =
    ["feature_search", "attribute_filter", "rerank", "summarize"];

/// Everything the stream needs to produce its events.
#[derive(Clone, Debug)]
pub(crate) struct StreamPlan {
    pub(crate) execution_id: String,
    pub(crate) namespace: String,
    pub(crate) retriever_id: Option<String>,
    pub(crate) interval: Duration,
    pub(crate) gate: Option<Arc<Semaphore>>,
}

#[derive(Serialize)]
struct StageEvent<'a> {
    stage_index: usize,
    stage_name: &'a str,
    status: &'a str,
}

#[derive(Serialize)]
struct CompleteEvent<'a> {
    execution_id: &'a str,
    execution_mode: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retriever_id: Option<&'a str>,
    namespace: &'a str,
    status: &'a str,
    stages_completed: u64,
    total_stages: u64,
    total_returned: u64,
}

/// The `index`-th event of the stream: stages first, then `complete`;
/// `None` past the end.
pub(crate) fn event(plan: &StreamPlan, index: usize) -> Option<Bytes> {
    let (name, data) = if let Some(stage_name) = STAGES.get(index) {
        let data = serde_json::to_string(&StageEvent {
            stage_index: index,
            stage_name,
            status: "completed",
        });
        ("stage", data)
    } else if index == STAGES.len() {
        let data = serde_json::to_string(&CompleteEvent {
            execution_id: &plan.execution_id,
            execution_mode: if plan.retriever_id.is_some() {
                "retriever"
            } else {
                "adhoc"
            },
            retriever_id: plan.retriever_id.as_deref(),
            namespace: &plan.namespace,
            status: "completed",
            stages_completed: TOTAL_STAGES,
            total_stages: TOTAL_STAGES,
            total_returned: 3,
        });
        ("complete", data)
    } else {
        return None;
    };
    // Serializing these plain structs cannot fail; an empty object keeps the
    // stream well-formed regardless.
    let data = data.unwrap_or_else(|_| "{}".to_owned());
    Some(Bytes::from(format!("event: {name}\ndata: {data}\n\n")))
}

/// The streaming body: the first event at once, each later one after the
/// interval and, if gated, one permit.
pub(crate) fn body(plan: StreamPlan) -> SimBody {
    let events = stream::unfold((0usize, plan), |(index, plan)| async move {
        if index > 0 && index <= STAGES.len() {
            if !plan.interval.is_zero() {
                tokio::time::sleep(plan.interval).await;
            }
            if let Some(gate) = &plan.gate {
                // A closed semaphore just lets the stream finish.
                if let Ok(permit) = gate.acquire().await {
                    permit.forget();
                }
            }
        }
        let bytes = event(&plan, index)?;
        Some((bytes, (index + 1, plan)))
    });
    StreamBody::new(events.map(|bytes| Ok::<_, Infallible>(Frame::data(bytes)))).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn plan(gate: Option<Arc<Semaphore>>) -> StreamPlan {
        StreamPlan {
            execution_id: "exec_1001".into(),
            namespace: "ns_a".into(),
            retriever_id: None,
            interval: Duration::ZERO,
            gate,
        }
    }

    #[test]
    fn event_format() {
        let plan = plan(None);
        assert_eq!(
            event(&plan, 0).unwrap(),
            "event: stage\ndata: {\"stage_index\":0,\"stage_name\":\"feature_search\",\"status\":\"completed\"}\n\n"
        );
        let complete = event(&plan, 4).unwrap();
        assert!(complete.starts_with(b"event: complete\ndata: {\"execution_id\":\"exec_1001\""));
        assert!(event(&plan, 5).is_none());
    }

    #[tokio::test]
    async fn one_frame_per_event() {
        let mut body = body(plan(None));
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            frames.push(frame.unwrap().into_data().unwrap());
        }
        assert_eq!(frames.len(), 5);
        assert!(frames[3].starts_with(b"event: stage"));
        assert!(frames[4].starts_with(b"event: complete"));
    }

    #[tokio::test]
    async fn gate_holds_back_later_events() {
        let gate = Arc::new(Semaphore::new(0));
        let mut body = body(plan(Some(gate.clone())));
        assert!(body.frame().await.is_some());
        let waiting = tokio::time::timeout(Duration::from_millis(20), body.frame()).await;
        assert!(waiting.is_err(), "second event sent without a permit");
        gate.add_permits(4);
        let mut rest = 0;
        while body.frame().await.is_some() {
            rest += 1;
        }
        assert_eq!(rest, 4);
        assert_eq!(gate.available_permits(), 0);
    }
}
