//! How each kind of sink is sent to: the HTTP request of a webhook or a chat robot (payload,
//! signature), the check of a robot's answer, and a plain SMTP client for email.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::{Entry, Kind, Sink};

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// What a delivery sends over HTTP: URL, headers, body.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The HTTP request that delivers `entry` to `sink` at `now` (every kind but email).
pub fn request(sink: &Sink, entry: &Entry, now: DateTime<Utc>) -> Request {
    let url = sink.url.clone().unwrap_or_default();
    let text = entry.text();
    let mut headers = vec![("Content-Type".to_owned(), "application/json".to_owned())];
    let (url, body) = match sink.kind {
        Kind::Webhook => {
            let body = entry.json().to_string();
            let timestamp = now.timestamp().to_string();
            let secret = sink.secret.as_deref().unwrap_or_default();
            // Signed over "timestamp.body", so a captured request cannot be replayed later
            // with another timestamp.
            let signature = hex::encode(hmac_sha256(
                secret.as_bytes(),
                format!("{timestamp}.{body}").as_bytes(),
            ));
            headers.push(("Idempotency-Key".to_owned(), entry.id.clone()));
            headers.push(("X-Runbook-Timestamp".to_owned(), timestamp));
            headers.push((
                "X-Runbook-Signature".to_owned(),
                format!("sha256={signature}"),
            ));
            (url, body)
        }
        Kind::Slack => (url, serde_json::json!({ "text": text }).to_string()),
        Kind::Wecom => (
            url,
            serde_json::json!({"msgtype": "text", "text": {"content": text}}).to_string(),
        ),
        Kind::Dingtalk => {
            let body =
                serde_json::json!({"msgtype": "text", "text": {"content": text}}).to_string();
            match &sink.secret {
                // DingTalk's signed robots: timestamp (ms) and base64(HMAC(secret, "ts\nsecret")).
                Some(secret) => {
                    let timestamp = now.timestamp_millis();
                    let sign = base64(&hmac_sha256(
                        secret.as_bytes(),
                        format!("{timestamp}\n{secret}").as_bytes(),
                    ));
                    let joiner = if url.contains('?') { '&' } else { '?' };
                    (
                        format!(
                            "{url}{joiner}timestamp={timestamp}&sign={}",
                            url_encode(&sign)
                        ),
                        body,
                    )
                }
                None => (url, body),
            }
        }
        Kind::Feishu => {
            let mut body = serde_json::json!({"msg_type": "text", "content": {"text": text}});
            // Feishu/Lark's signed bots: base64(HMAC(key = "ts\nsecret", message = "")).
            if let Some(secret) = &sink.secret {
                let timestamp = now.timestamp();
                let sign = base64(&hmac_sha256(
                    format!("{timestamp}\n{secret}").as_bytes(),
                    b"",
                ));
                body["timestamp"] = serde_json::json!(timestamp.to_string());
                body["sign"] = serde_json::json!(sign);
            }
            (url, body.to_string())
        }
        Kind::Email => (url, String::new()),
    };
    Request {
        url,
        headers,
        body: body.into_bytes(),
    }
}

/// Whether a robot's answer says it took the message: DingTalk and WeCom answer
/// `{"errcode": 0}`, Feishu `{"code": 0}` (or `StatusCode`), with HTTP 200 either way.
pub fn accepted(kind: Kind, body: &[u8]) -> Result<(), String> {
    let field = match kind {
        Kind::Dingtalk | Kind::Wecom => "errcode",
        Kind::Feishu => "code",
        _ => return Ok(()),
    };
    let answer: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let code = answer
        .get(field)
        .or_else(|| answer.get("StatusCode"))
        .and_then(serde_json::Value::as_i64);
    match code {
        Some(0) => Ok(()),
        _ => Err(format!(
            "the robot refused the message: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        )),
    }
}

/// Sends `entry` as an email through the relay of `sink` (plain SMTP: EHLO, MAIL, RCPT, DATA).
pub async fn send_email(sink: &Sink, entry: &Entry) -> Result<(), String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let relay = sink.smtp.as_deref().unwrap_or_default();
    let from = sink.from.as_deref().unwrap_or_default();
    let stream = tokio::net::TcpStream::connect(relay)
        .await
        .map_err(|error| format!("SMTP relay {relay}: {error}"))?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    // Reads one reply (its continuation lines too) and checks its code.
    async fn reply(
        lines: &mut tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
        want: char,
        after: &str,
    ) -> Result<(), String> {
        loop {
            let line = lines
                .next_line()
                .await
                .map_err(|error| format!("SMTP after {after}: {error}"))?
                .ok_or_else(|| format!("SMTP after {after}: the relay closed the connection"))?;
            if line.len() >= 4 && &line[3..4] == "-" {
                continue;
            }
            return if line.starts_with(want) {
                Ok(())
            } else {
                Err(format!("SMTP after {after}: {line}"))
            };
        }
    }
    reply(&mut lines, '2', "connecting").await?;
    for (command, want) in [
        ("EHLO runbook\r\n".to_owned(), '2'),
        (format!("MAIL FROM:<{from}>\r\n"), '2'),
    ] {
        write
            .write_all(command.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        reply(&mut lines, want, command.trim()).await?;
    }
    for to in &sink.to {
        let command = format!("RCPT TO:<{to}>\r\n");
        write
            .write_all(command.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        reply(&mut lines, '2', command.trim()).await?;
    }
    write
        .write_all(b"DATA\r\n")
        .await
        .map_err(|e| e.to_string())?;
    reply(&mut lines, '3', "DATA").await?;
    let subject: String = entry
        .text()
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    let mut body = String::new();
    for line in entry.json().to_string().lines().chain(std::iter::once("")) {
        // Dot-stuffing: a line that starts with a dot gets another.
        if line.starts_with('.') {
            body.push('.');
        }
        body.push_str(line);
        body.push_str("\r\n");
    }
    let message = format!(
        "From: <{from}>\r\nTo: {}\r\nSubject: {subject}\r\nMessage-ID: <{}@runbook>\r\n\
         Date: {}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n\r\n{body}.\r\n",
        sink.to
            .iter()
            .map(|to| format!("<{to}>"))
            .collect::<Vec<_>>()
            .join(", "),
        url_encode(&entry.id),
        entry.created_at.to_rfc2822(),
        entry
            .message
            .replace('\n', "\r\n")
            .replace("\r\n.", "\r\n.."),
    );
    write
        .write_all(message.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    reply(&mut lines, '2', "the message").await?;
    let _ = write.write_all(b"QUIT\r\n").await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2 of RFC 4231.
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let long_key = [0xaa; 131];
        assert_eq!(
            hex::encode(hmac_sha256(
                &long_key,
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn base64_encodes() {
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(base64(b"hi"), "aGk=");
        assert_eq!(base64(b"abc"), "YWJj");
    }
}
