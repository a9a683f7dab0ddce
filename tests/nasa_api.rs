//! The NASA client against the fake API over real HTTP: every fixture path the Fetcher can take.

mod common;

use common::*;
use nasa_ingest::image::ImageVariant;
use nasa_ingest::nasa::{NasaClient, NasaError};
use std::time::Duration;

fn client(nasa: &FakeNasa, variant: ImageVariant) -> NasaClient {
    NasaClient::new(url::Url::parse(&nasa.url).unwrap(), variant, Duration::from_secs(5))
}

#[tokio::test]
async fn random_images_come_from_the_fixtures_with_a_usable_url() {
    let nasa = fake_nasa();
    let c = client(&nasa, ImageVariant::Orig);
    let mut seen = std::collections::HashSet::new();
    for i in 0..60 {
        let q = ["moon", "mars", "earth"][i % 3];
        let found = c.random_image(q).await.unwrap().expect("hits");
        assert!(found.image_url.starts_with(&nasa.url), "{}", found.image_url);
        assert!(found.image_url.ends_with(".jpg"), "{}", found.image_url);
        assert!(found.title.is_some() && found.center.is_some() && found.date_created.is_some());
        seen.insert(found.nasa_id);
    }
    assert!(seen.len() >= 10, "pages beyond the first are picked too: {seen:?}");
}

#[tokio::test]
async fn every_random_topic_has_images_of_its_own() {
    let nasa = fake_nasa();
    let c = client(&nasa, ImageVariant::Orig);
    let mut owner: std::collections::HashMap<String, &str> = Default::default();
    for topic in nasa_ingest::config::RANDOM_TOPICS {
        for page in 1.. {
            let found = c.search(topic, page).await.unwrap();
            if found.items.is_empty() {
                assert!(page > 1, "{topic} has no hits");
                break;
            }
            for item in &found.items {
                let image = c.found_image(item).await.unwrap_or_else(|e| panic!("{topic}: {e}"));
                assert!(image.image_url.starts_with(&nasa.url), "{}", image.image_url);
                let other = owner.insert(image.nasa_id.clone(), topic);
                assert!(other.is_none(), "{} is served for {topic} and {other:?}", image.nasa_id);
            }
            if !found.has_next() {
                break;
            }
        }
    }
    assert!(owner.len() >= 8 * 4, "{owner:?}");
    // Items listing only a thumbnail are resolved through their manifest, synthesized ids too.
    let hrefs = c.asset_hrefs("PIA13517-nebula").await.unwrap();
    assert!(hrefs.iter().any(|h| h.ends_with("/image/PIA13517-nebula/PIA13517-nebula~orig.jpg")), "{hrefs:?}");
}

#[tokio::test]
async fn old_items_get_their_original_from_the_asset_manifest() {
    let nasa = fake_nasa();
    let c = client(&nasa, ImageVariant::Orig);
    // moon-page3 holds one old item (PIA13517) that lists only a thumbnail.
    let page = c.search("moon", 3).await.unwrap();
    assert_eq!(page.items[0].data[0].nasa_id, "PIA13517");
    for _ in 0..40 {
        let found = c.random_image("moon").await.unwrap().unwrap();
        if found.nasa_id == "PIA13517" {
            assert!(found.image_url.ends_with("/image/PIA13517/PIA13517~orig.jpg"), "{}", found.image_url);
            return;
        }
    }
    panic!("PIA13517 never picked in 40 tries (1 in 7 each)");
}

#[tokio::test]
async fn manifest_fallbacks_tif_original_and_non_ascii_ids() {
    let nasa = fake_nasa();
    let c = client(&nasa, ImageVariant::Orig);
    let hrefs = c.asset_hrefs("PIA00573").await.unwrap();
    let pick = nasa_ingest::nasa::pick_variant(hrefs.iter().map(String::as_str), ImageVariant::Orig).unwrap();
    assert!(pick.ends_with("PIA00573~large.jpg"), "the .tif original is skipped: {pick}");
    let hrefs = c.asset_hrefs("moon-mosaic-ü-2020").await.unwrap();
    assert!(hrefs.iter().any(|h| h.ends_with("moon-mosaic-ü-2020~orig.jpg")), "percent-encoded id reached the manifest");
    match c.asset_hrefs("does-not-exist").await {
        Err(NasaError::Status { status: 404, reason }) => assert!(reason.contains("No AssetDB records"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn no_hits_and_deep_paging_are_answered_clearly() {
    let nasa = fake_nasa();
    let c = client(&nasa, ImageVariant::Medium);
    assert_eq!(c.random_image("zzqqxx").await.unwrap(), None, "no hits: nothing to publish");
    match c.search("moon", 101).await {
        Err(NasaError::Status { status: 400, reason }) => assert!(reason.contains("Maximum number of search results"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let found = c.random_image("earth").await.unwrap().unwrap();
    assert!(
        found.image_url.contains("~medium.jpg") || found.image_url.contains("~small.jpg") || found.image_url.contains("~thumb.jpg"),
        "{}",
        found.image_url
    );
}

#[tokio::test]
async fn api_failures_are_typed() {
    let nasa = fake_nasa();
    let c = NasaClient::new(url::Url::parse(&nasa.url).unwrap(), ImageVariant::Orig, Duration::from_secs(1));
    nasa.state.set_api_mode(ApiMode::Status(503));
    assert!(matches!(c.random_image("moon").await, Err(NasaError::Status { status: 503, .. })));
    nasa.state.set_api_mode(ApiMode::Status(429));
    assert!(matches!(c.random_image("moon").await, Err(NasaError::RateLimited)));
    nasa.state.set_api_mode(ApiMode::Hang);
    assert!(matches!(c.random_image("moon").await, Err(NasaError::Timeout(_))));
    let (_, _) = nasa.stop();
    assert!(matches!(c.random_image("moon").await, Err(NasaError::Unreachable(_))));
}

#[test]
fn the_fake_makes_true_jpeg_png_and_tiff() {
    let (jpeg, ct) = common::fake_nasa::make_image("/image/as11-40-5874/as11-40-5874~orig.jpg");
    assert_eq!(ct, "image/jpeg");
    assert!(jpeg.starts_with(b"\xFF\xD8\xFF") && jpeg.ends_with(b"\xFF\xD9"), "SOI ... EOI");
    let (png_bytes, ct) = common::fake_nasa::make_image("/image/PIA00405/PIA00405~orig.jpg");
    assert_eq!(ct, "image/png");
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().expect("a PNG a decoder reads");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (96, 64));
    let (tiff, ct) = common::fake_nasa::make_image("/image/PIA00573/PIA00573~orig.tif");
    assert_eq!(ct, "image/tiff");
    assert!(tiff.starts_with(b"II*\x00"));
}
