//! A git smart-HTTP server on 127.0.0.1 that requires `Authorization: token <t>`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Response, StatusCode, header};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// One request the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedRequest {
    pub method: String,
    /// Path and query, as requested.
    pub uri: String,
    /// Whether it carried the right token.
    pub authorized: bool,
    pub status: u16,
}

struct Shared {
    project_root: PathBuf,
    backend: PathBuf,
    expected_authorization: String,
    delay: Duration,
    served: Mutex<Vec<ServedRequest>>,
}

/// Serves every bare repository under a project root (`<root>/<owner>/<name>.git`) at
/// `http://127.0.0.1:<port>/<owner>/<name>.git`, pushes included. Stops when dropped.
#[derive(Debug)]
pub struct GitHttpServer {
    address: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("project_root", &self.project_root)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl GitHttpServer {
    /// Starts a server for the repositories under `project_root` that accepts only requests
    /// with `Authorization: token <token>`.
    pub async fn start(project_root: &Path, token: &str) -> std::io::Result<Self> {
        Self::start_with_delay(project_root, token, Duration::ZERO).await
    }

    /// [`GitHttpServer::start`], answering each request only after `delay` (so a test can
    /// watch the client's processes while a request is open).
    pub async fn start_with_delay(
        project_root: &Path,
        token: &str,
        delay: Duration,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            project_root: project_root.canonicalize()?,
            backend: http_backend_path().await?,
            expected_authorization: format!("token {token}"),
            delay,
            served: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            address,
            shared,
            shutdown: Some(shutdown),
            task,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The clone URL of `<owner>/<name>.git` under the project root.
    pub fn clone_url(&self, owner: &str, name: &str) -> String {
        format!("{}/{owner}/{name}.git", self.base_url())
    }

    /// Every request answered so far.
    pub fn served(&self) -> Vec<ServedRequest> {
        self.shared
            .served
            .lock()
            .map(|served| served.clone())
            .unwrap_or_default()
    }
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.task.abort();
    }
}

/// `$(git --exec-path)/git-http-backend`.
async fn http_backend_path() -> std::io::Result<PathBuf> {
    let output = tokio::process::Command::new("git")
        .arg("--exec-path")
        .output()
        .await?;
    let exec_path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let backend = Path::new(&exec_path).join("git-http-backend");
    if backend.is_file() {
        Ok(backend)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no git-http-backend at {}", backend.display()),
        ))
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response<Body> {
    let method = request.method().as_str().to_owned();
    let uri = request.uri().to_string();
    let authorized = request
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|value| value.as_bytes() == shared.expected_authorization.as_bytes());
    if !shared.delay.is_zero() {
        tokio::time::sleep(shared.delay).await;
    }
    let response = if authorized {
        run_backend(&shared, request)
            .await
            .unwrap_or_else(|message| {
                plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("backend failed: {message}"),
                )
            })
    } else {
        let mut response = plain(StatusCode::UNAUTHORIZED, "authentication required");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"mosaic mock Gitea\""),
        );
        response
    };
    if let Ok(mut served) = shared.served.lock() {
        served.push(ServedRequest {
            method,
            uri,
            authorized,
            status: response.status().as_u16(),
        });
    }
    response
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(Body::from(text.to_owned()));
    *response.status_mut() = status;
    response
}

/// Runs git-http-backend for one request (CGI/1.1) and turns its output into a response.
async fn run_backend(shared: &Shared, request: Request) -> Result<Response<Body>, String> {
    let (parts, body) = request.into_parts();
    let header_text = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let mut command = tokio::process::Command::new(&shared.backend);
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &shared.project_root)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_PROJECT_ROOT", &shared.project_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        // http-backend enables receive-pack (push) only for an authenticated user.
        .env("REMOTE_USER", "mosaic-bot")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(value) = header_text(header::CONTENT_TYPE) {
        command.env("CONTENT_TYPE", value);
    }
    if let Some(value) = header_text(header::CONTENT_LENGTH) {
        command.env("CONTENT_LENGTH", value);
    }
    if let Some(value) = header_text(header::CONTENT_ENCODING) {
        command.env("HTTP_CONTENT_ENCODING", value);
    }
    if let Some(value) = parts
        .headers
        .get("git-protocol")
        .and_then(|value| value.to_str().ok())
    {
        command.env("HTTP_GIT_PROTOCOL", value);
    }
    let mut child = command.spawn().map_err(|err| err.to_string())?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    // The body streams in while the output is read, so neither side can fill a pipe and stall.
    let feeder = tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { break };
            if stdin.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = stdin.shutdown().await;
    });
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let mut output = Vec::new();
    let mut errors = Vec::new();
    let (read_out, read_err) = tokio::join!(
        stdout.read_to_end(&mut output),
        stderr.read_to_end(&mut errors)
    );
    read_out.map_err(|err| err.to_string())?;
    read_err.map_err(|err| err.to_string())?;
    let _ = feeder.await;
    let _ = child.wait().await;
    parse_cgi_response(&output).ok_or_else(|| {
        format!(
            "unreadable CGI output; stderr: {}",
            String::from_utf8_lossy(&errors)
        )
    })
}

/// Headers up to the first blank line (`Status:` gives the status), then the body.
fn parse_cgi_response(output: &[u8]) -> Option<Response<Body>> {
    let (head_end, body_start) = find_blank_line(output)?;
    let head = std::str::from_utf8(&output[..head_end]).ok()?;
    let mut status = StatusCode::OK;
    let mut headers = BTreeMap::new();
    for line in head.lines() {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next()?.parse::<u16>().ok()?;
            status = StatusCode::from_u16(code).ok()?;
        } else {
            headers.insert(name.to_owned(), value.to_owned());
        }
    }
    let mut response = Response::new(Body::from(output[body_start..].to_vec()));
    *response.status_mut() = status;
    for (name, value) in headers {
        let name = header::HeaderName::from_bytes(name.as_bytes()).ok()?;
        let value = HeaderValue::from_str(&value).ok()?;
        response.headers_mut().insert(name, value);
    }
    Some(response)
}

fn find_blank_line(output: &[u8]) -> Option<(usize, usize)> {
    for at in 0..output.len() {
        if output[at..].starts_with(b"\r\n\r\n") {
            return Some((at, at + 4));
        }
        if output[at..].starts_with(b"\n\n") {
            return Some((at, at + 2));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cgi_status_headers_and_body() {
        let response =
            parse_cgi_response(b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope")
                .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "text/plain");
        let response = parse_cgi_response(b"Content-Type: x/y\n\nbody\n\nmore").unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(parse_cgi_response(b"no blank line").is_none());
    }
}
