//! Which simulated operation a request is, decided from method and path.
//!
//! Only the routes the gateway treats specially are modelled; everything
//! else is [`Route::Echo`].

use http::Method;
use percent_encoding::percent_decode_str;

/// The operations the simulator models.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// `GET /v1/retrievers/executions/{id}`
    AdhocDetail { id: String },
    /// `GET /v1/retrievers/{retriever_id}/executions/{id}`
    RetrieverDetail { retriever_id: String, id: String },
    /// `POST /v1/retrievers/executions/list`
    AdhocList,
    /// `POST /v1/retrievers/{retriever_id}/executions/list`
    RetrieverList { retriever_id: String },
    /// `POST /v1/retrievers/execute`
    AdhocExecute,
    /// `POST /v1/retrievers/{retriever_id}/execute`
    RetrieverExecute { retriever_id: String },
    /// Anything else: answered by echoing the request.
    Echo,
}

/// The names requests are counted under, indexed by [`Route::class`].
pub(crate) const ROUTE_KEYS: [&str; 7] = [
    "GET /v1/retrievers/executions/{id}",
    "GET /v1/retrievers/{retriever_id}/executions/{id}",
    "POST /v1/retrievers/executions/list",
    "POST /v1/retrievers/{retriever_id}/executions/list",
    "POST /v1/retrievers/execute",
    "POST /v1/retrievers/{retriever_id}/execute",
    "other",
];

impl Route {
    /// Classifies a request by method and raw (still percent-encoded) path.
    pub(crate) fn classify(method: &Method, path: &str) -> Self {
        let segments: Vec<&str> = match path.strip_prefix("/v1/retrievers/") {
            Some(rest) => rest.split('/').collect(),
            None => return Route::Echo,
        };
        if segments.iter().any(|s| s.is_empty()) {
            return Route::Echo;
        }
        let get = method == Method::GET;
        let post = method == Method::POST;
        match segments.as_slice() {
            ["execute"] if post => Route::AdhocExecute,
            ["executions", "list"] if post => Route::AdhocList,
            ["executions", id] if get => Route::AdhocDetail { id: decode(id) },
            [retriever, "execute"] if post => Route::RetrieverExecute {
                retriever_id: decode(retriever),
            },
            [retriever, "executions", "list"] if post => Route::RetrieverList {
                retriever_id: decode(retriever),
            },
            [retriever, "executions", id] if get => Route::RetrieverDetail {
                retriever_id: decode(retriever),
                id: decode(id),
            },
            _ => Route::Echo,
        }
    }

    /// Index into [`ROUTE_KEYS`].
    pub(crate) fn class(&self) -> usize {
        match self {
            Route::AdhocDetail { .. } => 0,
            Route::RetrieverDetail { .. } => 1,
            Route::AdhocList => 2,
            Route::RetrieverList { .. } => 3,
            Route::AdhocExecute => 4,
            Route::RetrieverExecute { .. } => 5,
            Route::Echo => 6,
        }
    }
}

fn decode(segment: &str) -> String {
    percent_decode_str(segment).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Route {
        Route::classify(&Method::GET, path)
    }

    fn post(path: &str) -> Route {
        Route::classify(&Method::POST, path)
    }

    #[test]
    fn modelled_routes() {
        assert_eq!(
            get("/v1/retrievers/executions/exec_1"),
            Route::AdhocDetail {
                id: "exec_1".into()
            }
        );
        assert_eq!(
            get("/v1/retrievers/ret_1/executions/exec_%31"),
            Route::RetrieverDetail {
                retriever_id: "ret_1".into(),
                id: "exec_1".into()
            }
        );
        assert_eq!(post("/v1/retrievers/executions/list"), Route::AdhocList);
        assert_eq!(
            post("/v1/retrievers/ret_1/executions/list"),
            Route::RetrieverList {
                retriever_id: "ret_1".into()
            }
        );
        assert_eq!(post("/v1/retrievers/execute"), Route::AdhocExecute);
        assert_eq!(
            post("/v1/retrievers/ret_1/execute"),
            Route::RetrieverExecute {
                retriever_id: "ret_1".into()
            }
        );
    }

    #[test]
    fn everything_else_echoes() {
        for (method, path) in [
            (Method::POST, "/v1/retrievers/executions/exec_1"),
            (Method::DELETE, "/v1/retrievers/executions/exec_1"),
            (Method::GET, "/v1/retrievers/execute"),
            (Method::GET, "/v1/retrievers/r/executions/exec_1/status"),
            (Method::GET, "/v1/retrievers/executions/exec_1/"),
            (Method::GET, "/v1/retrievers//executions/exec_1"),
            (Method::GET, "/v1/collections"),
            (Method::GET, "*"),
            (Method::GET, ""),
        ] {
            assert_eq!(Route::classify(&method, path), Route::Echo, "{path}");
        }
    }

    #[test]
    fn classes_match_keys() {
        assert_eq!(
            ROUTE_KEYS[Route::AdhocList.class()],
            "POST /v1/retrievers/executions/list"
        );
        assert_eq!(ROUTE_KEYS[Route::Echo.class()], "other");
    }
}
