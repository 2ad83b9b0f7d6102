//! Listing executions: `POST /v1/retrievers/executions/list` and
//! `POST /v1/retrievers/{retriever_id}/executions/list`.
//!
//! Each namespace (and retriever) has the same fixed set of [`LISTED`]
//! completed executions, `exec_1`..`exec_25`, listed newest first. Query
//! parameters and the optional body are validated the way the API does,
//! answering 422 otherwise.

use http::{Response, StatusCode};
use serde::Serialize;
use serde_json::Value;

use super::executions::{ExecutionSummary, Phase};
use super::respond::{self, SimBody};

/// How many executions each namespace has.
pub(crate) const LISTED: u64 = 25;

/// Page size when neither `limit` nor `page_size` is given.
pub(crate) const DEFAULT_PAGE_SIZE: u64 = 10;

/// Paging asked for in the query string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Paging {
    page_size: u64,
    /// Index of the first result.
    start: u64,
    /// 1-based page number reported back.
    page: u64,
    include_total: bool,
}

/// Filters asked for in the body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Filter {
    status: Option<String>,
    count_only: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct ListResponse {
    results: Vec<ExecutionSummary>,
    total: u64,
    pagination: Pagination,
}

#[derive(Debug, Serialize)]
struct Pagination {
    total: Option<u64>,
    page: u64,
    page_size: u64,
    total_pages: Option<u64>,
    next_page: Option<u64>,
    previous_page: Option<u64>,
    next_cursor: Option<String>,
}

/// Answers a list request, or 422 for invalid parameters or body.
pub(crate) fn respond(
    namespace: &str,
    retriever_id: Option<&str>,
    query: Option<&str>,
    body: &[u8],
) -> Response<SimBody> {
    let paging = match Paging::parse(query) {
        Ok(paging) => paging,
        Err(message) => return respond::validation(&message),
    };
    let filter = match Filter::parse(body) {
        Ok(filter) => filter,
        Err(message) => return respond::validation(&message),
    };
    respond::json(
        StatusCode::OK,
        &list(namespace, retriever_id, paging, &filter),
    )
}

impl Paging {
    /// Parses `limit`/`page_size` (1..=1000), `offset` (0..=10000), `page`
    /// (>= 1) and `include_total`; `offset` wins over `page`, `limit` over
    /// `page_size`. Cursor parameters are accepted and ignored; unknown
    /// parameters (e.g. `namespace`) are ignored.
    pub(crate) fn parse(query: Option<&str>) -> Result<Self, String> {
        let (mut limit, mut page_size, mut offset, mut page) = (None, None, None, None);
        let mut include_total = false;
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*key {
                "limit" => limit = Some(integer("limit", &value, 1, 1000)?),
                "page_size" => page_size = Some(integer("page_size", &value, 1, 1000)?),
                "offset" => offset = Some(integer("offset", &value, 0, 10_000)?),
                "page" => page = Some(integer("page", &value, 1, u64::MAX)?),
                "include_total" => include_total = boolean("include_total", &value)?,
                _ => {}
            }
        }
        let page_size = limit.or(page_size).unwrap_or(DEFAULT_PAGE_SIZE);
        let (start, page) = match (offset, page) {
            (Some(offset), _) => (offset, offset / page_size + 1),
            (None, Some(page)) => ((page - 1).saturating_mul(page_size), page),
            (None, None) => (0, 1),
        };
        Ok(Self {
            page_size,
            start,
            page,
            include_total,
        })
    }
}

fn integer(name: &str, value: &str, min: u64, max: u64) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(_) if max == u64::MAX => Err(format!("{name} must be at least {min}")),
        Ok(_) => Err(format!("{name} must be between {min} and {max}")),
        Err(_) => Err(format!("{name} must be an integer")),
    }
}

fn boolean(name: &str, value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("{name} must be a boolean")),
    }
}

impl Filter {
    /// Parses the optional `ListAdhocExecutionsRequest` body: empty means no
    /// filters; otherwise a JSON object with only `status` (string or null),
    /// `start_time`, `end_time` (string, number or null; accepted, not
    /// applied) and `count_only` (bool or null).
    pub(crate) fn parse(body: &[u8]) -> Result<Self, String> {
        if body.trim_ascii().is_empty() {
            return Ok(Self::default());
        }
        let value: Value = serde_json::from_slice(body)
            .map_err(|_| "Request body is not valid JSON".to_owned())?;
        let Value::Object(fields) = value else {
            return Err("Request body must be a JSON object".to_owned());
        };
        let mut filter = Self::default();
        for (key, value) in fields {
            match (key.as_str(), value) {
                ("status", Value::String(status)) => filter.status = Some(status),
                ("status", Value::Null) => {}
                ("start_time" | "end_time", Value::String(_) | Value::Number(_) | Value::Null) => {}
                ("count_only", Value::Bool(count_only)) => filter.count_only = count_only,
                ("count_only", Value::Null) => {}
                ("status" | "start_time" | "end_time" | "count_only", _) => {
                    return Err(format!("{key}: invalid type"));
                }
                _ => return Err(format!("{key}: extra inputs are not permitted")),
            }
        }
        Ok(filter)
    }
}

/// The page of the namespace's executions that `paging` and `filter` select.
pub(crate) fn list(
    namespace: &str,
    retriever_id: Option<&str>,
    paging: Paging,
    filter: &Filter,
) -> ListResponse {
    let matching: Vec<ExecutionSummary> = (1..=LISTED)
        .rev()
        .map(|n| {
            let id = format!("exec_{n}");
            let status = Phase::Terminal.status(&id);
            ExecutionSummary::new(namespace, retriever_id, &id, status)
        })
        .filter(|summary| {
            filter
                .status
                .as_deref()
                .is_none_or(|wanted| wanted.eq_ignore_ascii_case(summary.status))
        })
        .collect();
    let total = matching.len() as u64;
    let end = paging.start.saturating_add(paging.page_size);
    let results = if filter.count_only {
        Vec::new()
    } else {
        matching
            .into_iter()
            .skip(usize::try_from(paging.start).unwrap_or(usize::MAX))
            .take(usize::try_from(paging.page_size).unwrap_or(usize::MAX))
            .collect()
    };
    let counted = |n: u64| paging.include_total.then_some(n);
    ListResponse {
        results,
        total,
        pagination: Pagination {
            total: counted(total),
            page: paging.page,
            page_size: paging.page_size,
            total_pages: counted(total.div_ceil(paging.page_size)),
            next_page: (end < total).then(|| paging.page.saturating_add(1)),
            previous_page: (paging.page > 1).then(|| paging.page - 1),
            next_cursor: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(response: &ListResponse) -> Vec<&str> {
        response
            .results
            .iter()
            .map(|s| s.execution_id.as_str())
            .collect()
    }

    fn page(query: &str, body: &str) -> ListResponse {
        list(
            "ns_a",
            None,
            Paging::parse(Some(query)).unwrap(),
            &Filter::parse(body.as_bytes()).unwrap(),
        )
    }

    #[test]
    fn defaults_newest_first() {
        let response = page("", "");
        assert_eq!(response.results.len(), 10);
        assert_eq!(ids(&response)[..2], ["exec_25", "exec_24"]);
        assert_eq!(response.total, 25);
        assert_eq!(response.pagination.total, None);
        assert_eq!(response.pagination.total_pages, None);
        assert_eq!(response.pagination.next_page, Some(2));
        assert_eq!(response.pagination.previous_page, None);
        let timestamps: Vec<_> = response.results.iter().map(|s| &s.timestamp).collect();
        assert!(timestamps.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn limit_offset_and_page() {
        let response = page("limit=5&offset=20&include_total=true", "");
        assert_eq!(
            ids(&response),
            ["exec_5", "exec_4", "exec_3", "exec_2", "exec_1"]
        );
        assert_eq!(response.pagination.page, 5);
        assert_eq!(response.pagination.total, Some(25));
        assert_eq!(response.pagination.total_pages, Some(5));
        assert_eq!(response.pagination.next_page, None);
        assert_eq!(response.pagination.previous_page, Some(4));

        let response = page("page_size=10&page=3", "");
        assert_eq!(
            ids(&response),
            ["exec_5", "exec_4", "exec_3", "exec_2", "exec_1"]
        );
        assert_eq!(page("page=99", "").results.len(), 0);
        assert_eq!(page("limit=1000", "").results.len(), 25);
    }

    #[test]
    fn body_filters() {
        assert_eq!(page("", r#"{"status":"COMPLETED"}"#).total, 25);
        let failed = page("", r#"{"status":"failed"}"#);
        assert_eq!((failed.total, failed.results.len()), (0, 0));
        let count = page("", r#"{"count_only":true,"status":null,"start_time":null}"#);
        assert_eq!((count.total, count.results.len()), (25, 0));
        assert_eq!(page("", " \n").total, 25);
    }

    #[test]
    fn invalid_query_parameters() {
        for query in [
            "limit=0",
            "limit=1001",
            "page_size=0",
            "limit=abc",
            "limit=",
            "offset=10001",
            "offset=-1",
            "page=0",
            "include_total=maybe",
        ] {
            assert!(Paging::parse(Some(query)).is_err(), "{query}");
        }
        assert!(Paging::parse(Some("cursor=x&namespace=y&after=z")).is_ok());
    }

    #[test]
    fn invalid_bodies() {
        for body in [
            "not json",
            "[]",
            "null",
            "42",
            r#"{"status":"completed","extra":1}"#,
            r#"{"status":5}"#,
            r#"{"count_only":"yes"}"#,
            r#"{"start_time":{}}"#,
        ] {
            assert!(Filter::parse(body.as_bytes()).is_err(), "{body}");
        }
    }

    #[test]
    fn retriever_list_and_namespaces() {
        let paging = Paging::parse(None).unwrap();
        let a = list("ns_a", Some("ret_1"), paging, &Filter::default());
        let b = list("ns_b", Some("ret_1"), paging, &Filter::default());
        assert_eq!(a.results[0].retriever_id.as_deref(), Some("ret_1"));
        assert_eq!(a.results[0].execution_mode, "retriever");
        assert_ne!(a.results[0].query_summary, b.results[0].query_summary);
    }

    #[tokio::test]
    async fn rejects_with_422() {
        let response = respond("d", None, Some("limit=0"), b"");
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let response = respond("d", None, None, br#"{"bogus":1}"#);
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["error"]["type"], "ValidationError");
        assert_eq!(value["status"], 422);
    }
}
