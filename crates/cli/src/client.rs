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
    #[error("{url} sent a malformed event stream: {detail}")]
    Stream { url: String, detail: String },
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
        let body = send(url, token).await?.into_body();
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
