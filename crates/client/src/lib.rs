//! A small client of scfsim's admin API: GET and other calls with the admin token, JSON answers,
//! and the `/api/events` stream. Used by the `scfsim` commands that talk to a running scfsim
//! (`invocations`, `send`, `close`) and by `scfsim test` to read records. It is not the admin API
//! (that is `scfsim-admin`) and knows nothing of the records' shape.

#![forbid(unsafe_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Why a call to the admin API gave no answer to use. `Status` is the API's own refusal; the others
/// are the URL (the caller's), the connection, or the answer.
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
    #[error("{url} sent a malformed event stream: {detail}")]
    Stream { url: String, detail: String },
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

/// `method` on `url` with the admin token (if any) and a JSON `body` (or none); a non-2xx answer
/// is an error carrying its body. The caller reads (or streams) a successful answer's body.
async fn request(
    method: hyper::Method,
    url: &str,
    token: Option<&str>,
    body: Option<String>,
) -> Result<hyper::Response<Incoming>, ClientError> {
    let mut req = hyper::Request::builder().method(method).uri(url);
    if let Some(token) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if body.is_some() {
        req = req.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| ClientError::Url {
            url: url.to_string(),
            message: e.to_string(),
        })?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
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

/// A successful answer's whole body.
async fn read_body(url: &str, resp: hyper::Response<Incoming>) -> Result<Bytes, ClientError> {
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

/// GET `url` (with the admin token, if any), expecting 200; returns the body.
pub async fn get(url: &str) -> Result<Bytes, ClientError> {
    get_with_token(url, None).await
}

pub async fn get_with_token(url: &str, token: Option<&str>) -> Result<Bytes, ClientError> {
    let resp = request(hyper::Method::GET, url, token, None).await?;
    read_body(url, resp).await
}

/// GET `url` (with the admin token, if any), expecting 200 and a JSON body.
pub async fn get_json(url: &str, token: Option<&str>) -> Result<serde_json::Value, ClientError> {
    let body = get_with_token(url, token).await?;
    serde_json::from_slice(&body).map_err(|source| ClientError::Json {
        url: url.to_string(),
        source,
    })
}

/// `method` on `url` with a JSON `body` (or none), expecting a 2xx; returns the body.
pub async fn call(
    method: hyper::Method,
    url: &str,
    token: Option<&str>,
    body: Option<String>,
) -> Result<Bytes, ClientError> {
    let resp = request(method, url, token, body).await?;
    read_body(url, resp).await
}

/// The events of one server-sent event stream, parsed by `eventsource-stream`.
type Events = std::pin::Pin<
    Box<
        dyn futures_util::Stream<
                Item = Result<
                    eventsource_stream::Event,
                    eventsource_stream::EventStreamError<hyper::Error>,
                >,
            > + Send,
    >,
>;

/// An open server-sent event stream.
pub struct EventStream {
    url: String,
    events: Events,
}

impl EventStream {
    /// Opens the stream; events that happen from now on are buffered until read.
    pub async fn open(url: &str, token: Option<&str>) -> Result<EventStream, ClientError> {
        use eventsource_stream::Eventsource;
        let body = request(hyper::Method::GET, url, token, None)
            .await?
            .into_body();
        Ok(EventStream {
            url: url.to_string(),
            events: Box::pin(body.into_data_stream().eventsource()),
        })
    }

    /// The next `(event, data)`, or `None` when the stream ends.
    pub async fn next_event(&mut self) -> Result<Option<(String, String)>, ClientError> {
        use futures_util::StreamExt;
        match self.events.next().await {
            None => Ok(None),
            Some(Ok(event)) => Ok(Some((event.event, event.data))),
            Some(Err(eventsource_stream::EventStreamError::Transport(source))) => {
                Err(ClientError::Body {
                    url: self.url.clone(),
                    source,
                })
            }
            Some(Err(err)) => Err(ClientError::Stream {
                url: self.url.clone(),
                detail: err.to_string(),
            }),
        }
    }
}
