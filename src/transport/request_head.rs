//! Copies a Socket.IO handshake's URI and headers out of the connection's read buffer.
//!
//! hyper parses a request head in place: the URI and every header value are slices of the
//! connection's read buffer (8 KiB at least), and a slice keeps the whole buffer alive.
//! socketioxide keeps the handshake request's parts for as long as the socket lives, so every
//! idle WebSocket pinned a read buffer it would never use again: about 13 KiB of the 33 KiB a
//! connection cost (heaptrack, BENCHMARKS.md). Copying the head, a few hundred bytes, before
//! the upgrade lets the buffer go when the WebSocket takes over the connection. axum's router
//! also keeps a clone of the URI in the request's extensions (`OriginalUri`), so that one is
//! replaced too.

use axum::body::Body;
use axum::extract::OriginalUri;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Uri};

/// The path under which socketioxide serves; only its requests can outlive their connection's
/// HTTP phase, so only they are copied.
const SOCKET_IO_PATH: &str = "/socket.io";

/// axum middleware (`map_request`): detaches the head of every Socket.IO request.
pub async fn detach_socket_io_head(request: Request<Body>) -> Request<Body> {
    if request.uri().path().starts_with(SOCKET_IO_PATH) {
        detach(request)
    } else {
        request
    }
}

/// Replaces the URI and the headers with copies that share no memory with the originals.
pub fn detach<B>(mut request: Request<B>) -> Request<B> {
    let uri = owned_uri(request.uri());
    if let Some(original) = request.extensions_mut().get_mut::<OriginalUri>() {
        *original = OriginalUri(owned_uri(&original.0));
    }
    *request.uri_mut() = uri;
    let headers = owned_headers(request.headers());
    *request.headers_mut() = headers;
    request
}

fn owned_uri(uri: &Uri) -> Uri {
    // From a String, `Uri` takes the string's own allocation. The text came from a valid URI,
    // so it parses again; if it ever did not, the shared original is kept (only memory is lost).
    Uri::try_from(uri.to_string()).unwrap_or_else(|_| uri.clone())
}

fn owned_headers(headers: &HeaderMap) -> HeaderMap {
    let mut owned = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        // Standard names are static; a custom name may be a slice of the buffer too.
        let name =
            HeaderName::from_bytes(name.as_str().as_bytes()).unwrap_or_else(|_| name.clone());
        let value = HeaderValue::from_bytes(value.as_bytes())
            .map(|mut copy| {
                copy.set_sensitive(value.is_sensitive());
                copy
            })
            .unwrap_or_else(|_| value.clone());
        owned.append(name, value);
    }
    owned
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// A request whose URI and header values are slices of `buffer`, as hyper builds them.
    fn parsed_in_place(buffer: &Bytes) -> Request<()> {
        let text = std::str::from_utf8(buffer).unwrap();
        let slice = |needle: &str| {
            let start = text.find(needle).unwrap();
            buffer.slice(start..start + needle.len())
        };
        let mut request = Request::new(());
        let uri = Uri::from_maybe_shared(slice("/socket.io/?EIO=4")).unwrap();
        request.extensions_mut().insert(OriginalUri(uri.clone()));
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        let value = HeaderValue::from_maybe_shared(slice("Bearer abc")).unwrap();
        headers.insert("authorization", value);
        let value = HeaderValue::from_maybe_shared(slice("websocket")).unwrap();
        headers.insert("x-custom", value.clone());
        headers.append("x-custom", value);
        request
    }

    fn points_into(buffer: &Bytes, bytes: &[u8]) -> bool {
        let range = buffer.as_ptr_range();
        range.contains(&bytes.as_ptr())
    }

    #[test]
    fn the_copy_shares_nothing_with_the_read_buffer() {
        let buffer =
            Bytes::from(b"GET /socket.io/?EIO=4 HTTP/1.1\r\nBearer abc websocket".to_vec());
        let original = parsed_in_place(&buffer);
        assert!(points_into(
            &buffer,
            original.headers()["authorization"].as_bytes()
        ));

        let copy = detach(parsed_in_place(&buffer));
        for value in copy.headers().values() {
            assert!(
                !points_into(&buffer, value.as_bytes()),
                "{value:?} still shared"
            );
        }
        assert!(!points_into(&buffer, copy.uri().path().as_bytes()));
        assert!(!points_into(
            &buffer,
            copy.uri().query().unwrap().as_bytes()
        ));
        let original_uri = &copy.extensions().get::<OriginalUri>().unwrap().0;
        assert!(!points_into(&buffer, original_uri.path().as_bytes()));
    }

    #[test]
    fn the_copy_is_equal_to_the_original() {
        let buffer =
            Bytes::from(b"GET /socket.io/?EIO=4 HTTP/1.1\r\nBearer abc websocket".to_vec());
        let original = parsed_in_place(&buffer);
        let copy = detach(parsed_in_place(&buffer));
        assert_eq!(copy.uri(), original.uri());
        let original_uri = |r: &Request<()>| r.extensions().get::<OriginalUri>().unwrap().0.clone();
        assert_eq!(original_uri(&copy), original_uri(&original));
        assert_eq!(copy.headers(), original.headers());
        assert_eq!(copy.headers().get_all("x-custom").iter().count(), 2);
    }
}
