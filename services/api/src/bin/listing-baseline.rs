//! The baseline of the listing benchmark (`bench/registry_load.sh --http`): the api's HTTP stack
//! (poem, the same response type) serving bytes held in memory, so the benchmark can tell what
//! the api adds to sending the same listing. `PUT /body` stores the bytes, `GET /body` answers
//! them.
//!
//!   listing-baseline 127.0.0.1:9000

use std::sync::{Arc, RwLock};

use bytes::Bytes;
use poem::listener::TcpListener;
use poem::web::Data;
use poem::{handler, put, EndpointExt, Response, Route, Server};

type Held = Arc<RwLock<Bytes>>;

#[handler]
fn get_body(held: Data<&Held>) -> Response {
    let body = held.read().unwrap_or_else(|p| p.into_inner()).clone();
    Response::builder()
        .content_type("application/json; charset=utf-8")
        .body(body)
}

#[handler]
fn put_body(held: Data<&Held>, body: Bytes) -> &'static str {
    *held.write().unwrap_or_else(|p| p.into_inner()) = body;
    "stored"
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into());
    let held: Held = Arc::default();
    let app = Route::new()
        .at("/body", put(put_body).get(get_body))
        .data(held);
    Server::new(TcpListener::bind(addr)).run(app).await
}
