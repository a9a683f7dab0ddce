//! A fake NASA Images API and image server over real HTTP, built from fixture files
//! (`tests/fixtures/nasa/`). Tests use it in-process; the `fake-nasa` example serves it for demos
//! offline. Test code only: it is not compiled into the daemon.
//!
//! It substitutes its own origin for NASA's hosts in the JSON it serves, makes up real image
//! bytes for file URLs (JPEG, PNG for `PIA*` ids, TIFF for `.tif`), remembers what it served,
//! counts requests, and can misbehave on demand (status codes, hangs, malformed JSON, slow images).
//!
//! Fixtures exist for a few topics only; every other topic the Fetcher picks at random
//! ([`RANDOM_TOPICS`]) is answered with a copy of a fixture topic's pages whose nasa_ids carry
//! the topic as a suffix (`PIA00405-nebula`), so that images of two topics never share an id.
//! A query that is no topic still gets the genuinely empty answer.

use actix_web::{dev::ServerHandle, web, App, HttpRequest, HttpResponse, HttpServer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nasa_ingest::config::RANDOM_TOPICS;

/// How the API endpoints (/search, /asset) behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ApiMode {
    #[default]
    Normal,
    /// Answer every API request with this status.
    Status(u16),
    /// Accept the request and never answer.
    Hang,
    /// Answer 200 with a body that is not JSON.
    Malformed,
}

#[derive(Default)]
pub struct FakeState {
    fixtures: Mutex<PathBuf>,
    origin: Mutex<String>,
    pub api_mode: Mutex<ApiMode>,
    /// Delay before each API answer.
    pub api_delay: Mutex<Duration>,
    /// Delay before each image is served.
    pub image_delay: Mutex<Duration>,
    /// Status to answer for image paths containing the key (e.g. an id), instead of the image.
    pub image_status: Mutex<HashMap<String, u16>>,
    /// Delay for image paths containing the key, instead of `image_delay`.
    pub slow_images: Mutex<HashMap<String, Duration>>,
    pub searches: AtomicUsize,
    pub image_requests: AtomicUsize,
    images_in_flight: AtomicUsize,
    pub max_images_in_flight: AtomicUsize,
    served: Mutex<HashMap<String, Vec<u8>>>,
}

impl FakeState {
    /// The bytes served for a URL path (as requested, percent-encoded).
    pub fn served(&self, path: &str) -> Option<Vec<u8>> {
        self.served.lock().unwrap().get(path).cloned()
    }
    pub fn served_count(&self) -> usize {
        self.served.lock().unwrap().len()
    }
    pub fn set_api_mode(&self, mode: ApiMode) {
        *self.api_mode.lock().unwrap() = mode;
    }
    pub fn set_api_delay(&self, d: Duration) {
        *self.api_delay.lock().unwrap() = d;
    }
    pub fn set_image_delay(&self, d: Duration) {
        *self.image_delay.lock().unwrap() = d;
    }
    pub fn slow_image(&self, path_part: &str, delay: Duration) {
        self.slow_images.lock().unwrap().insert(path_part.to_owned(), delay);
    }
    pub fn set_image_status(&self, path_part: &str, status: u16) {
        self.image_status.lock().unwrap().insert(path_part.to_owned(), status);
    }
}

pub struct FakeNasa {
    /// e.g. http://127.0.0.1:PORT
    pub url: String,
    pub addr: SocketAddr,
    pub state: Arc<FakeState>,
    handle: ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeNasa {
    /// Serves `fixtures` on a free port of 127.0.0.1.
    pub fn start(fixtures: &Path) -> std::io::Result<FakeNasa> {
        Self::start_on(fixtures, "127.0.0.1:0".parse().unwrap(), Arc::new(FakeState::default()))
    }

    /// Serves on `addr` with `state` (pass the old state to restart on the same port: its
    /// counters and faults carry over).
    pub fn start_on(fixtures: &Path, addr: SocketAddr, state: Arc<FakeState>) -> std::io::Result<FakeNasa> {
        *state.fixtures.lock().unwrap() = fixtures.to_owned();
        state.images_in_flight.store(0, Ordering::SeqCst);
        let (tx, rx) = std::sync::mpsc::channel();
        let server_state = state.clone();
        let thread = std::thread::Builder::new().name("fake-nasa".into()).spawn(move || {
            let sys = actix_rt::System::new();
            sys.block_on(async move {
                let data = web::Data::from(server_state);
                let bound = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .route("/search", web::get().to(search))
                        .route("/asset/{id}", web::get().to(asset))
                        .route("/image/{id}/{file}", web::get().to(image))
                })
                .workers(1)
                .disable_signals()
                .shutdown_timeout(1)
                .bind(addr);
                match bound {
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                    Ok(server) => {
                        let addr = server.addrs()[0];
                        let server = server.run();
                        let _ = tx.send(Ok((addr, server.handle())));
                        let _ = server.await;
                    }
                }
            });
        })?;
        let (addr, handle) = rx.recv().map_err(|e| std::io::Error::other(e.to_string()))??;
        let url = format!("http://{addr}");
        *state.origin.lock().unwrap() = url.clone();
        Ok(FakeNasa { url, addr, state, handle, thread: Some(thread) })
    }

    /// Stops serving: connections are refused until a new server binds the port.
    pub fn stop(mut self) -> (SocketAddr, Arc<FakeState>) {
        self.shutdown();
        (self.addr, self.state.clone())
    }

    fn shutdown(&mut self) {
        if let Some(t) = self.thread.take() {
            let handle = self.handle.clone();
            // stop() is a future; run it on a small runtime of its own.
            std::thread::spawn(move || actix_rt::System::new().block_on(handle.stop(false))).join().ok();
            t.join().ok();
        }
    }
}

impl Drop for FakeNasa {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn fixture(state: &FakeState, rel: &str) -> Option<String> {
    let text = std::fs::read_to_string(state.fixtures.lock().unwrap().join(rel)).ok()?;
    let origin = state.origin.lock().unwrap().clone();
    Some(
        text.replace("https://images-api.nasa.gov", &origin)
            .replace("https://images-assets.nasa.gov", &origin)
            .replace("http://images-assets.nasa.gov", &origin),
    )
}

fn json(status: u16, body: String) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).content_type("application/json").body(body)
}

/// The API's misbehaviour, if one is set.
async fn api_fault(state: &FakeState) -> Option<HttpResponse> {
    let delay = *state.api_delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mode = *state.api_mode.lock().unwrap();
    match mode {
        ApiMode::Normal => None,
        ApiMode::Status(s) => Some(json(s, format!(r#"{{"reason": "fake failure {s}"}}"#))),
        ApiMode::Malformed => Some(json(200, r#"{"collection": {"items": [{"data": "#.into())),
        ApiMode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            None
        }
    }
}

async fn search(state: web::Data<FakeState>, query: web::Query<HashMap<String, String>>) -> HttpResponse {
    state.searches.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = api_fault(&state).await {
        return r;
    }
    let Some(q) = query.get("q").filter(|q| !q.is_empty()) else {
        return json(400, fixture(&state, "errors/search-no-params.json").unwrap_or_default());
    };
    let page: u64 = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    if page > 100 {
        return json(400, fixture(&state, "errors/search-too-deep.json").unwrap_or_default());
    }
    let body = fixture(&state, &format!("search/{q}-page{page}.json"))
        .or_else(|| synthesized_page(&state, q, page))
        .or_else(|| fixture(&state, "search/empty-page1.json"))
        .unwrap_or_default();
    json(200, body)
}

/// The fixture topics (those with a page 1), in a stable order.
fn fixture_topics(state: &FakeState) -> Vec<&'static str> {
    let dir = state.fixtures.lock().unwrap().join("search");
    RANDOM_TOPICS.into_iter().filter(|t| dir.join(format!("{t}-page1.json")).exists()).collect()
}

/// The fixture topic a topic without fixtures borrows its pages from (round robin over the
/// topics, so the borrowed pages differ between neighbours).
fn source_topic(state: &FakeState, topic: &str) -> Option<&'static str> {
    let sources = fixture_topics(state);
    let index = RANDOM_TOPICS.iter().position(|t| *t == topic)?;
    if sources.is_empty() || sources.contains(&topic) {
        return None;
    }
    Some(sources[index % sources.len()])
}

/// A page of a topic without fixtures: the source topic's page with every nasa_id renamed.
fn synthesized_page(state: &FakeState, topic: &str, page: u64) -> Option<String> {
    let source = source_topic(state, topic)?;
    let text = fixture(state, &format!("search/{source}-page{page}.json"))?;
    let ids: Vec<String> = nasa_ingest::nasa::parse_search(text.as_bytes())
        .ok()?
        .items
        .iter()
        .filter_map(|i| i.data.first().map(|d| d.nasa_id.clone()))
        .collect();
    let mut text = text.replace(&format!("q={source}&"), &format!("q={topic}&"));
    // Longest first: no id is renamed inside another one.
    let mut ids = ids;
    ids.sort_by_key(|id| std::cmp::Reverse(id.len()));
    for id in ids {
        text = text.replace(&id, &synthesized_id(&id, topic));
    }
    Some(text)
}

/// The id a fixture item gets under another topic. A suffix, so `PIA` ids stay PNGs.
fn synthesized_id(id: &str, topic: &str) -> String {
    format!("{id}-{topic}")
}

/// The asset manifest of a synthesized id: the original's, renamed the same way.
fn synthesized_asset(state: &FakeState, id: &str) -> Option<String> {
    let (original, topic) = id.rsplit_once('-')?;
    source_topic(state, topic)?;
    let text = fixture(state, &format!("asset/{original}.json"))?;
    Some(text.replace(original, &synthesized_id(original, topic)))
}

async fn asset(state: web::Data<FakeState>, id: web::Path<String>) -> HttpResponse {
    if let Some(r) = api_fault(&state).await {
        return r;
    }
    match fixture(&state, &format!("asset/{id}.json")).or_else(|| synthesized_asset(&state, &id)) {
        Some(body) => json(200, body),
        None => json(404, fixture(&state, "errors/asset-not-found.json").unwrap_or_default()),
    }
}

async fn image(state: web::Data<FakeState>, req: HttpRequest) -> HttpResponse {
    let path = req.uri().path().to_owned();
    state.image_requests.fetch_add(1, Ordering::SeqCst);
    let now = state.images_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_images_in_flight.fetch_max(now, Ordering::SeqCst);
    let delay = for_path(&state.slow_images, &path).unwrap_or(*state.image_delay.lock().unwrap());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    state.images_in_flight.fetch_sub(1, Ordering::SeqCst);
    if let Some(status) = for_path(&state.image_status, &path) {
        return HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).body("fake failure");
    }
    if path.ends_with(".json") {
        return json(404, r#"{"reason": "not an image"}"#.into());
    }
    if path.ends_with(".html") {
        return HttpResponse::Ok().content_type("text/html").body("<!DOCTYPE html><p>not an image</p>");
    }
    let (mut bytes, content_type) = make_image(&path);
    if path.contains("~huge") {
        // Still an image by its magic, but 2 MiB long.
        bytes.resize(bytes.len() + 2 * 1024 * 1024, 0);
    }
    state.served.lock().unwrap().insert(path, bytes.clone());
    HttpResponse::Ok().content_type(content_type).body(bytes)
}

/// The value set for the first key that `path` contains.
fn for_path<T: Copy>(map: &Mutex<HashMap<String, T>>, path: &str) -> Option<T> {
    map.lock().unwrap().iter().find(|(k, _)| path.contains(k.as_str())).map(|(_, v)| *v)
}

/// Real, decodable image bytes, different for each path: PNG for NASA's `PIA` ids, TIFF for
/// `.tif`, JPEG otherwise.
pub fn make_image(path: &str) -> (Vec<u8>, &'static str) {
    let seed = path.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    let (w, h) = (96u16, 64u16);
    let pixels: Vec<u8> = (0..h as u32)
        .flat_map(|y| (0..w as u32).map(move |x| (x, y)))
        .flat_map(|(x, y)| {
            let s = seed as u32;
            [(x * 2 + s) as u8, (y * 3 + (s >> 8)) as u8, ((x + y) + (s >> 16)) as u8]
        })
        .collect();
    let name = path.rsplit('/').next().unwrap_or("");
    if name.ends_with(".tif") {
        return (tiff(&pixels, w, h), "image/tiff");
    }
    if name.starts_with("PIA") {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, w as u32, h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().expect("png header");
        writer.write_image_data(&pixels).expect("png data");
        writer.finish().expect("png end");
        return (out, "image/png");
    }
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 85).encode(&pixels, w, h, jpeg_encoder::ColorType::Rgb).expect("jpeg");
    (out, "image/jpeg")
}

/// A minimal baseline TIFF (uncompressed RGB, one strip).
fn tiff(pixels: &[u8], w: u16, h: u16) -> Vec<u8> {
    let entries: [(u16, u16, u32, u32); 8] = [
        (256, 3, 1, w as u32),            // ImageWidth
        (257, 3, 1, h as u32),            // ImageLength
        (258, 3, 1, 8),                   // BitsPerSample (8 for each sample)
        (259, 3, 1, 1),                   // Compression: none
        (262, 3, 1, 2),                   // Photometric: RGB
        (273, 4, 1, 0),                   // StripOffsets (patched below)
        (277, 3, 1, 3),                   // SamplesPerPixel
        (279, 4, 1, pixels.len() as u32), // StripByteCounts
    ];
    let ifd_len = 2 + entries.len() * 12 + 4;
    let data_at = (8 + ifd_len) as u32;
    let mut out = b"II*\x00".to_vec();
    out.extend_from_slice(&8u32.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for (tag, typ, count, value) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&typ.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        let value = if tag == 273 { data_at } else { value };
        if typ == 3 {
            out.extend_from_slice(&(value as u16).to_le_bytes());
            out.extend_from_slice(&[0, 0]);
        } else {
            out.extend_from_slice(&value.to_le_bytes());
        }
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(pixels);
    out
}
