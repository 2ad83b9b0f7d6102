//! Execution details: the lifecycle of an execution and the deterministic
//! `AdhocExecutionDetail` / `ExecutionDetail` bodies.
//!
//! Every field is derived from (namespace, retriever, id), so repeated
//! requests answer identical bytes until the status changes, and the same id
//! in two namespaces answers different content.

use std::time::Duration;

use tokio::time::Instant;

use http::{Response, StatusCode};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::respond::{self, SimBody};
use super::state::{ExecutionKey, SimState};

/// Stages every simulated execution runs.
pub(crate) const TOTAL_STAGES: u64 = 4;

/// Length of the padded `inputs` string; sized so a completed detail body
/// for a short namespace and id is about 900 bytes, which benchmarks rely on.
const INPUTS_LEN: usize = 455;

/// 2026-01-01T00:00:00Z, the simulated executions' epoch.
const EPOCH_SECS: u64 = 1_767_225_600;

/// Where an execution is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Pending,
    Processing,
    Terminal,
}

impl Phase {
    /// The phase `elapsed` after the first request, for an execution that
    /// takes `complete_after`: pending for the first third, processing until
    /// `complete_after`, terminal from then on.
    pub(crate) fn at(elapsed: Duration, complete_after: Duration) -> Self {
        if elapsed >= complete_after {
            Phase::Terminal
        } else if elapsed < complete_after / 3 {
            Phase::Pending
        } else {
            Phase::Processing
        }
    }

    /// The status string for execution `id` in this phase; ids starting
    /// `exec_fail` end "failed".
    pub(crate) fn status(self, id: &str) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Processing => "processing",
            Phase::Terminal if id.starts_with("exec_fail") => "failed",
            Phase::Terminal => "completed",
        }
    }
}

/// Whether `id` names an execution the simulator knows.
pub(crate) fn is_known(id: &str) -> bool {
    id.starts_with("exec_")
}

/// An execution summary: the detail without `inputs` and `inputs_hash`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ExecutionSummary {
    pub(crate) execution_id: String,
    pub(crate) execution_mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) retriever_id: Option<String>,
    pub(crate) status: &'static str,
    pub(crate) timestamp: String,
    pub(crate) duration_ms: u64,
    pub(crate) credits_used: f64,
    pub(crate) total_processed: u64,
    pub(crate) total_returned: u64,
    pub(crate) stages_completed: u64,
    pub(crate) total_stages: u64,
    pub(crate) cache_hit_rate: Option<f64>,
    pub(crate) query_summary: Option<String>,
    pub(crate) collection_ids: Option<Vec<String>>,
}

/// `AdhocExecutionDetail` (no retriever) or `ExecutionDetail`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ExecutionDetail {
    #[serde(flatten)]
    pub(crate) summary: ExecutionSummary,
    pub(crate) inputs: Option<String>,
    pub(crate) inputs_hash: Option<String>,
}

impl ExecutionSummary {
    /// The summary of execution `id` in `namespace` with the given status.
    pub(crate) fn new(
        namespace: &str,
        retriever_id: Option<&str>,
        id: &str,
        status: &'static str,
    ) -> Self {
        let seed = seed(namespace, retriever_id, id);
        let (stages_completed, returned) = match status {
            "pending" => (0, 0),
            "processing" => (TOTAL_STAGES / 2, 0),
            "failed" => (TOTAL_STAGES / 2, 0),
            _ => (TOTAL_STAGES, 10),
        };
        let terminal = matches!(status, "completed" | "failed");
        Self {
            execution_id: id.to_owned(),
            execution_mode: if retriever_id.is_some() {
                "retriever"
            } else {
                "adhoc"
            },
            retriever_id: retriever_id.map(str::to_owned),
            status,
            timestamp: rfc3339(EPOCH_SECS + offset_secs(id, seed)),
            duration_ms: if terminal { 40 + seed % 960 } else { 0 },
            credits_used: if terminal {
                (seed % 50) as f64 / 10.0
            } else {
                0.0
            },
            total_processed: if stages_completed > 0 {
                100 + (seed >> 8) % 900
            } else {
                0
            },
            total_returned: returned,
            stages_completed,
            total_stages: TOTAL_STAGES,
            cache_hit_rate: terminal.then(|| ((seed >> 16) % 101) as f64 / 100.0),
            query_summary: Some(format!(
                "Semantic search in namespace {namespace} for execution {id}"
            )),
            collection_ids: Some(vec![
                format!("col_{namespace}_1"),
                format!("col_{namespace}_2"),
            ]),
        }
    }
}

impl ExecutionDetail {
    /// The detail of execution `id` in `namespace` with the given status.
    pub(crate) fn new(
        namespace: &str,
        retriever_id: Option<&str>,
        id: &str,
        status: &'static str,
    ) -> Self {
        let inputs = inputs(namespace, retriever_id, id);
        let hash = Sha256::digest(inputs.as_bytes());
        Self {
            summary: ExecutionSummary::new(namespace, retriever_id, id, status),
            inputs_hash: Some(hex::encode(&hash[..20])),
            inputs: Some(inputs),
        }
    }
}

/// Answers `GET .../executions/{id}`: 404 for unknown ids, else the detail
/// at its current lifecycle phase (starting the lifecycle on first request).
pub(crate) fn respond(
    state: &SimState,
    complete_after: Duration,
    namespace: &str,
    retriever_id: Option<&str>,
    id: &str,
) -> Response<SimBody> {
    if !is_known(id) {
        return respond::execution_not_found();
    }
    let phase = if complete_after.is_zero() {
        // Nothing to remember: terminal at once.
        Phase::Terminal
    } else {
        let now = Instant::now();
        let key = ExecutionKey {
            namespace: namespace.to_owned(),
            retriever_id: retriever_id.map(str::to_owned),
            id: id.to_owned(),
        };
        let first = state.first_seen(key, now);
        Phase::at(now.saturating_duration_since(first), complete_after)
    };
    let detail = ExecutionDetail::new(namespace, retriever_id, id, phase.status(id));
    respond::json(StatusCode::OK, &detail)
}

/// A deterministic number from the execution's identity.
fn seed(namespace: &str, retriever_id: Option<&str>, id: &str) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(namespace.as_bytes());
    hasher.update([0]);
    hasher.update(retriever_id.unwrap_or("").as_bytes());
    hasher.update([0]);
    hasher.update(id.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Seconds after the epoch: `exec_<n>` is `n` hours in, so higher numbers
/// are newer; other ids get a spot within the year from their seed.
fn offset_secs(id: &str, seed: u64) -> u64 {
    match id.strip_prefix("exec_").and_then(|n| n.parse::<u64>().ok()) {
        Some(n) if n <= 100_000 => n * 3600,
        _ => seed % (365 * 86_400),
    }
}

/// The execution's inputs, padded to [`INPUTS_LEN`] with a deterministic
/// filler so body sizes are stable.
fn inputs(namespace: &str, retriever_id: Option<&str>, id: &str) -> String {
    let mut inputs = format!(
        "query=find scenes similar to the reference clip; namespace={namespace}; retriever={}; execution={id}; filler=",
        retriever_id.unwrap_or("adhoc")
    );
    const FILLER: &str = "lorem ipsum dolor sit amet consectetur adipiscing elit ";
    while inputs.len() < INPUTS_LEN {
        let room = INPUTS_LEN - inputs.len();
        inputs.push_str(&FILLER[..room.min(FILLER.len())]);
    }
    inputs
}

/// Formats seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn lifecycle_phases() {
        let total = 3 * SECOND;
        assert_eq!(Phase::at(Duration::ZERO, total), Phase::Pending);
        assert_eq!(
            Phase::at(SECOND - Duration::from_millis(1), total),
            Phase::Pending
        );
        assert_eq!(Phase::at(SECOND, total), Phase::Processing);
        assert_eq!(
            Phase::at(total - Duration::from_millis(1), total),
            Phase::Processing
        );
        assert_eq!(Phase::at(total, total), Phase::Terminal);
        assert_eq!(Phase::at(Duration::ZERO, Duration::ZERO), Phase::Terminal);
    }

    #[test]
    fn terminal_status_depends_on_id() {
        assert_eq!(Phase::Terminal.status("exec_1"), "completed");
        assert_eq!(Phase::Terminal.status("exec_fail_1"), "failed");
        assert_eq!(Phase::Pending.status("exec_fail_1"), "pending");
        assert_eq!(Phase::Processing.status("exec_1"), "processing");
    }

    #[test]
    fn completed_detail_is_about_900_bytes() {
        let detail = ExecutionDetail::new("default", None, "exec_1", "completed");
        let len = serde_json::to_vec(&detail).unwrap().len();
        assert!((850..=950).contains(&len), "{len}");
        let detail = ExecutionDetail::new("ns_demo", Some("ret_1"), "exec_42", "completed");
        let len = serde_json::to_vec(&detail).unwrap().len();
        assert!((850..=950).contains(&len), "{len}");
    }

    #[test]
    fn content_differs_per_namespace() {
        let a = ExecutionDetail::new("ns_a", None, "exec_1", "completed");
        let b = ExecutionDetail::new("ns_b", None, "exec_1", "completed");
        assert_ne!(a.inputs_hash, b.inputs_hash);
        assert!(a.summary.query_summary.as_deref().unwrap().contains("ns_a"));
        assert_eq!(a.summary.collection_ids.as_ref().unwrap()[0], "col_ns_a_1");
        assert_eq!(a.inputs_hash.as_ref().unwrap().len(), 40);
    }

    #[test]
    fn detail_shapes() {
        let adhoc =
            serde_json::to_value(ExecutionDetail::new("d", None, "exec_1", "completed")).unwrap();
        assert_eq!(adhoc["execution_mode"], "adhoc");
        assert!(adhoc.get("retriever_id").is_none());
        assert_eq!(adhoc["stages_completed"], 4);
        let retriever =
            serde_json::to_value(ExecutionDetail::new("d", Some("r"), "exec_1", "pending"))
                .unwrap();
        assert_eq!(retriever["execution_mode"], "retriever");
        assert_eq!(retriever["retriever_id"], "r");
        assert_eq!(retriever["status"], "pending");
        assert!(retriever["cache_hit_rate"].is_null());
    }

    #[test]
    fn same_identity_same_bytes() {
        let a = serde_json::to_vec(&ExecutionDetail::new("d", None, "exec_x", "completed"));
        let b = serde_json::to_vec(&ExecutionDetail::new("d", None, "exec_x", "completed"));
        assert_eq!(a.unwrap(), b.unwrap());
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(EPOCH_SECS), "2026-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400 + 3_661), "2000-02-29T01:01:01Z");
        assert_eq!(
            rfc3339(EPOCH_SECS + offset_secs("exec_25", 0)),
            "2026-01-02T01:00:00Z"
        );
    }

    #[test]
    fn lifecycle_over_state() {
        let state = SimState::default();
        let long = Duration::from_secs(3600);
        let response = respond(&state, long, "d", None, "exec_1");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            respond(&state, long, "d", None, "nope").status(),
            StatusCode::NOT_FOUND
        );
    }
}
