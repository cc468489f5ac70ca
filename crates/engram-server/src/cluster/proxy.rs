//! Cluster mode over REST: a read of a space (describe, list memories,
//! recall) or a forget that arrives at a node not owning the space's
//! partition is passed, whole, to the owner's HTTP listener; its answer
//! goes back as is. Writes and space creation need no owner (any node
//! publishes).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Duration;

use super::route::{OwnerAt, FORWARDED_HEADER};
use crate::http::{ApiError, AppState};

/// The space of a request the owner must answer: reads, forgets (the
/// owner knows whether the memory existed) and deleting the space.
fn read_of(method: &Method, path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v1/spaces/")?;
    let (raw, tail) = match rest.split_once('/') {
        Some((id, tail)) => (id, Some(tail)),
        None => (rest, None),
    };
    let owner_answers = matches!(
        (method.as_str(), tail),
        ("GET", None) | ("DELETE", None) | ("POST", Some("recall")) | ("GET", Some("memories"))
    ) || (method == Method::DELETE
        && tail.is_some_and(|t| {
            t.strip_prefix("memories/")
                .is_some_and(|id| !id.is_empty() && !id.contains('/'))
        }));
    if owner_answers {
        percent_decode(raw)
    } else {
        None
    }
}

/// `%XX` decoding of a path segment (as axum's `Path` extractor does);
/// `None` when it is not valid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// What the proxy needs: the server's state and the body limit (a
/// passed-on request's body is read whole, so never more than a handler
/// would take).
#[derive(Clone)]
pub struct ProxyState {
    pub app: AppState,
    pub max_body_bytes: usize,
}

/// The middleware: passes reads of another node's partitions to it.
pub async fn to_owner(State(proxy): State<ProxyState>, req: Request, next: Next) -> Response {
    let state = &proxy.app;
    let Some(cluster) = state.cluster() else {
        return next.run(req).await;
    };
    if req.headers().contains_key(FORWARDED_HEADER) {
        return next.run(req).await;
    }
    let Some(space) = read_of(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let p = cluster.partition(&space);
    let http = match cluster.owner_at(p).await {
        OwnerAt::Here => return next.run(req).await,
        OwnerAt::Node { http, .. } => http,
        OwnerAt::Nobody => {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("partition {p} has no owner at the moment (a takeover is running); retry"),
            )
            .into_response()
        }
    };
    let deletes_space =
        req.method() == Method::DELETE && !req.uri().path()["/v1/spaces/".len()..].contains('/');
    let answer = match forward(cluster, &http, req, proxy.max_body_bytes).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    if deletes_space {
        // This node's next call reads the registry afresh.
        cluster.evict_space(&space);
    }
    answer
}

async fn forward(
    cluster: &super::Cluster,
    http: &str,
    req: Request,
    max_body_bytes: usize,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, max_body_bytes)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body could not be read whole (http.max_body_bytes {max_body_bytes}): {e}"),
            )
        })?;
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let tls = &cluster.inner.peers_tls;
    let mut out = tls
        .http
        .request(
            parts.method.clone(),
            format!("{}://{http}{path}", tls.scheme()),
        )
        .timeout(Duration::from_secs(30))
        .header(FORWARDED_HEADER, cluster.node_id())
        .body(body);
    for (name, value) in &parts.headers {
        if name == axum::http::header::HOST || name == axum::http::header::CONTENT_LENGTH {
            continue;
        }
        out = out.header(name, value);
    }
    let unreachable = |e: reqwest::Error| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("forwarding to the owner at {http}: {e}; retry"),
        )
    };
    let answer = out.send().await.map_err(unreachable)?;
    let status = answer.status();
    let content_type = answer
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .cloned();
    let bytes = answer.bytes().await.map_err(unreachable)?;
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    if let Some(ct) = content_type {
        response
            .headers_mut()
            .insert(axum::http::header::CONTENT_TYPE, ct);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_of_a_space_go_to_its_owner() {
        assert_eq!(
            read_of(&Method::GET, "/v1/spaces/a%20b"),
            Some("a b".to_owned())
        );
        assert_eq!(
            read_of(&Method::POST, "/v1/spaces/s/recall"),
            Some("s".to_owned())
        );
        assert_eq!(
            read_of(&Method::GET, "/v1/spaces/s/memories"),
            Some("s".to_owned())
        );
        assert_eq!(read_of(&Method::POST, "/v1/spaces/s/memories"), None);
        assert_eq!(
            read_of(&Method::DELETE, "/v1/spaces/s/memories/m1"),
            Some("s".to_owned())
        );
        assert_eq!(read_of(&Method::DELETE, "/v1/spaces/s/memories/"), None);
        assert_eq!(
            read_of(&Method::DELETE, "/v1/spaces/s"),
            Some("s".to_owned())
        );
        assert_eq!(read_of(&Method::PUT, "/v1/spaces/s"), None);
        assert_eq!(read_of(&Method::GET, "/v1/spaces"), None);
        assert_eq!(read_of(&Method::GET, "/v1/cluster"), None);
        assert_eq!(percent_decode("%e2%82%ac"), Some("€".to_owned()));
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("50%"), Some("50%".to_owned()));
        assert_eq!(percent_decode("%é"), Some("%é".to_owned()));
    }
}
