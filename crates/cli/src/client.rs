//! A small client of the admin API, for `scfsim invocations`.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url} is not a valid URL: {source}")]
    Url {
        url: String,
        #[source]
        source: hyper::http::uri::InvalidUri,
    },
    #[error("cannot reach the admin API at {url}: {source} (is `scfsim serve` running, and is --admin right?)")]
    Request {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("reading the answer from {url}: {source}")]
    Body {
        url: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
}

/// GET `url`, expecting 200; returns the body.
pub async fn get(url: &str) -> Result<Bytes, ClientError> {
    let uri: hyper::Uri = url.parse().map_err(|source| ClientError::Url {
        url: url.to_string(),
        source,
    })?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let resp = client
        .get(uri)
        .await
        .map_err(|source| ClientError::Request {
            url: url.to_string(),
            source,
        })?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|source| ClientError::Body {
            url: url.to_string(),
            source,
        })?
        .to_bytes();
    if !status.is_success() {
        return Err(ClientError::Status {
            url: url.to_string(),
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    Ok(body)
}
