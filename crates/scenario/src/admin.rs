//! A small client of scfsim's admin API: the record of one invocation.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Why the admin API gave no record.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{url} is not a valid URL")]
    Url {
        url: String,
        #[source]
        source: http::Error,
    },
    #[error("cannot reach the admin API at {url}")]
    Request {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("cannot read the answer from {url}")]
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
    #[error("{url} answered something that is not JSON")]
    Json {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

/// GET `url` as JSON, with the admin token if there is one.
pub(crate) async fn get_json(
    url: &str,
    token: Option<&str>,
) -> Result<serde_json::Value, AdminError> {
    let mut req = hyper::Request::get(url);
    if let Some(token) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|source| AdminError::Url {
            url: url.to_owned(),
            source,
        })?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let resp = client
        .request(req)
        .await
        .map_err(|source| AdminError::Request {
            url: url.to_owned(),
            source,
        })?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|source| AdminError::Body {
            url: url.to_owned(),
            source,
        })?
        .to_bytes();
    if status != 200 {
        return Err(AdminError::Status {
            url: url.to_owned(),
            status,
            body: String::from_utf8_lossy(&body).trim().to_owned(),
        });
    }
    serde_json::from_slice(&body).map_err(|source| AdminError::Json {
        url: url.to_owned(),
        source,
    })
}
