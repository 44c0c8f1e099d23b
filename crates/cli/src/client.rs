//! A small client of the admin API, for `scfsim invocations`.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url} is not a valid URL: {message}")]
    Url { url: String, message: String },
    #[error(
        "cannot reach the admin API at {url} (is `scfsim serve` running, and is --admin right?)"
    )]
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
}

async fn send(url: &str, token: Option<&str>) -> Result<hyper::Response<Incoming>, ClientError> {
    let bad_url = |message: String| ClientError::Url {
        url: url.to_string(),
        message,
    };
    let mut req = hyper::Request::get(url);
    if let Some(token) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| bad_url(e.to_string()))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let resp = client
        .request(req)
        .await
        .map_err(|source| ClientError::Request {
            url: url.to_string(),
            source,
        })?;
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(ClientError::Status {
            url: url.to_string(),
            status,
            body,
        });
    }
    Ok(resp)
}

/// GET `url` (with the admin token, if any), expecting 200; returns the body.
pub async fn get(url: &str) -> Result<Bytes, ClientError> {
    get_with_token(url, None).await
}

pub async fn get_with_token(url: &str, token: Option<&str>) -> Result<Bytes, ClientError> {
    let resp = send(url, token).await?;
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|source| ClientError::Body {
            url: url.to_string(),
            source,
        })?;
    Ok(body.to_bytes())
}

/// An open server-sent event stream.
pub struct EventStream {
    url: String,
    body: Incoming,
    pending: Vec<u8>,
}

impl EventStream {
    /// Opens the stream; events that happen from now on are buffered until read.
    pub async fn open(url: &str, token: Option<&str>) -> Result<EventStream, ClientError> {
        Ok(EventStream {
            url: url.to_string(),
            body: send(url, token).await?.into_body(),
            pending: Vec::new(),
        })
    }

    /// The next `(event, data)`, or `None` when the stream ends.
    pub async fn next_event(&mut self) -> Result<Option<(String, String)>, ClientError> {
        let (mut event, mut data) = (String::new(), String::new());
        loop {
            while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\r', '\n']);
                if line.is_empty() {
                    if !data.is_empty() {
                        return Ok(Some((event, data)));
                    }
                    event.clear();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            let Some(frame) = self.body.frame().await else {
                return Ok(None);
            };
            let frame = frame.map_err(|source| ClientError::Body {
                url: self.url.clone(),
                source,
            })?;
            if let Some(chunk) = frame.data_ref() {
                self.pending.extend_from_slice(chunk);
            }
        }
    }
}
