//! Fake nodes for the client's unit tests: a loopback listener that answers each connection
//! with the next of its scripted raw HTTP responses (the last one again once they run out),
//! closes it, and keeps the requests it read, so a test can see what the client sent where.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A whole HTTP/1.1 response: `status` (`201 Created`), a `content_type` and `body`.
pub fn answer(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The requests a fake node read, as text, in order.
pub type Requests = Arc<Mutex<Vec<String>>>;

/// A fake node answering with `script`: its URL, and the requests it reads.
pub async fn fake_node(script: Vec<String>) -> (String, Requests) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests: Requests = Default::default();
    let seen = requests.clone();
    tokio::spawn(async move {
        let mut next = 0;
        while let Ok((mut conn, _)) = listener.accept().await {
            let response = script[next.min(script.len() - 1)].clone();
            next += 1;
            let seen = seen.clone();
            tokio::spawn(async move {
                // The tests' requests are small: one read holds the head and the body.
                let mut request = vec![0u8; 64 << 10];
                let n = conn.read(&mut request).await?;
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&request[..n]).into_owned());
                conn.write_all(response.as_bytes()).await?;
                std::io::Result::Ok(())
            });
        }
    });
    (format!("http://{addr}"), requests)
}
