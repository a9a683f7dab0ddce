//! The status page (`/`): the [`Status`] and a gallery of the latest stored images, as HTML.
//! Each image and dead letter shows its trace id, linked to the log search's query for that
//! trace when `LOG_SEARCH_URL` is set.
//! The template is maud's: checked when the crate compiles, and every value is HTML-escaped
//! (text from the NASA API passes through here).

use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::status::{ActorState, ActorStatus, Status};
use crate::config::observability::LogSearchUrl;
use crate::db::ImageSummary;
use crate::errors::Transient;

/// The latest stored images, or why they cannot be shown.
pub type Gallery = Result<Vec<ImageSummary>, GalleryError>;

/// Why the gallery cannot be shown.
#[derive(Debug, thiserror::Error)]
pub enum GalleryError {
    #[error(transparent)]
    Database(#[from] Transient),
    #[error("Postgres unavailable: {0}")]
    Blocking(#[from] actix_web::error::BlockingError),
}

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:1.5rem;background:#0b1020;color:#e8ecf5}
h1{margin:0 0 .3rem} .muted{color:#9aa4bd;font-size:.85rem} .ok{color:#7ee2a8} .bad{color:#ff8c8c}
.cards{display:flex;gap:1rem;flex-wrap:wrap;margin:1rem 0} .card{background:#151c33;border-radius:8px;padding:.8rem 1rem;min-width:9rem}
.card b{display:block;font-size:1.6rem} ul{list-style:none;padding:0} li{margin:.2rem 0} .warn{color:#ffd27a}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(380px,1fr));gap:0 2rem}
table{border-collapse:collapse;font-size:.9rem;width:100%} td,th{text-align:left;padding:.2rem .5rem;vertical-align:top;border-bottom:1px solid #222a44}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:1rem}
figure{margin:0;background:#151c33;border-radius:8px;overflow:hidden} figure img{width:100%;height:160px;object-fit:cover;display:block;background:#222}
figcaption{padding:.5rem .6rem;font-size:.9rem}
table.dlq{border-collapse:collapse;font-size:.9rem} table.dlq td,table.dlq th{text-align:left;padding:.2rem .8rem .2rem 0;vertical-align:top} code{color:#cfe3ff}
.trace{font-size:.75rem;word-break:break-all} .trace a{color:#9ab}
";

pub fn render(st: &Status, gallery: &Gallery, log_search: Option<&LogSearchUrl>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content="15";
                title { "nasa-ingest status" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "nasa-ingest" }
                div.muted {
                    "version " (st.version) " · roles " (st.roles) " · up " (st.uptime_seconds) " s · "
                    a href="/status" style="color:#9ab" { "/status" } " · "
                    a href="/metrics" style="color:#9ab" { "/metrics" }
                }
                (cards(st))
                div.cols {
                    div {
                        (dependencies_panel(st))
                        h2 { "Actors" }
                        ul { @for a in &st.actors { (actor_line(a)) } }
                        (consumer_panel(st))
                    }
                    div {
                        (activity_panel(st))
                        (problems_panel(st))
                        (dead_letters_panel(st, log_search))
                    }
                }
                h2 { "Latest images" }
                div.gallery { (gallery_items(gallery, log_search)) }
            }
        }
    }
}

/// The counts at a glance.
fn cards(st: &Status) -> Markup {
    let c = &st.counts;
    let d = &st.dead_letters.panel;
    // The topic's count (every process's, across restarts), once it was read; this process's until then.
    let dead_letters = if d.read_to_end { d.on_topic } else { c.dead_lettered };
    let in_database = st.in_database.images.map_or_else(|| "?".to_owned(), |n| n.to_string());
    html! {
        div.cards {
            div.card { b { (in_database) } "images in the database" }
            div.card { b { (c.published) } "published since start" }
            div.card { b { (c.consumed) } "consumed since start" }
            div.card { b { (c.duplicates) } "duplicates since start" }
            div.card { b { (dead_letters) } a href="#dead-letters" style="color:inherit" { "dead letters" } " on the topic" }
            div.card { b { (st.pending_events) } "pending in outbox" }
            div.card { b { (st.consumer_lag.values().sum::<i64>()) } "consumer lag" }
        }
    }
}

/// The time of an RFC 3339 timestamp, as HH:MM:SS (the page is read the same day).
fn clock(rfc3339: &str) -> &str {
    rfc3339.get(11..19).unwrap_or(rfc3339)
}

/// Each dependency: state, since when, and its last error.
fn dependencies_panel(st: &Status) -> Markup {
    html! {
        h2 { "Dependencies" }
        ul #dependencies {
            @for d in &st.dependencies {
                @let cls = match d.state { "up" => "ok", "unknown" => "muted", _ => "bad" };
                li.dep {
                    b { (d.name) } " " span class=(cls) { (d.state) } " " span.muted { "since " (clock(&d.since)) " UTC" }
                    @if let Some(e) = &d.last_error { br; span.muted { "last error: " (e) } }
                }
            }
        }
    }
}

/// An actor: state, restarts (with the times of the latest) and its last error.
fn actor_line(a: &ActorStatus) -> Markup {
    let cls = if a.state == ActorState::Running { "ok" } else { "bad" };
    html! {
        li class=(cls) {
            b { (a.name) } " " (a.state.name()) " · " (a.restarts) " restarts"
            @if !a.restart_times.is_empty() {
                " (at " (a.restart_times.iter().map(|t| clock(t)).collect::<Vec<_>>().join(", ")) " UTC)"
            }
            @if let Some(e) = &a.last_error { " · last: " (e) }
        }
    }
}

/// The consumer's group membership: member id, partitions held, and a stall if there is one.
fn consumer_panel(st: &Status) -> Markup {
    let Some(c) = &st.consumer else { return html! {} };
    let held = c.assigned_partitions.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ");
    html! {
        h2 { "Consumer" }
        ul {
            li { b { "partitions" } " " (if held.is_empty() { "none" } else { &held }) }
            li { b { "member" } " " span.muted { (c.member_id.as_deref().unwrap_or("(not known yet)")) } }
            li { b { "client" } " " span.muted { (c.client_id) } " · " (c.rejoins) " rejoins" }
            @if let Some(stall) = &c.stall {
                li.bad { "stalled: " (stall) }
            } @else if !c.broker_reachable {
                li.bad { "Kafka unreachable" }
            } @else {
                li.ok { "moving" }
            }
        }
    }
}

/// Rates over the last minute, and the Fetcher's last and next cycle.
fn activity_panel(st: &Status) -> Markup {
    let r = &st.rates_per_minute;
    html! {
        h2 { "Activity" }
        ul {
            // Rates are rounded to one decimal: shown as /status writes them (0.0, 12.5).
            li {
                b { "per minute" } " (last minute): " (format!("{:.1}", r.fetched)) " fetched · " (format!("{:.1}", r.published))
                " published · " (format!("{:.1}", r.consumed)) " consumed · " (format!("{:.1}", r.stored)) " stored"
            }
            @if let Some(f) = &st.fetches {
                li {
                    b { "last fetch" } " "
                    @if let (Some(at), Some(outcome)) = (&f.last_at, &f.last_outcome) { (clock(at)) " UTC: " (outcome) } @else { "not yet" }
                }
                li {
                    b { "next fetch" } " "
                    @if let Some(at) = &f.next_at { (clock(at)) " UTC" } @else { "after start-up" }
                }
            }
        }
    }
}

/// The last WARN and ERROR lines, newest first.
fn problems_panel(st: &Status) -> Markup {
    html! {
        h2 { "Recent warnings and errors" }
        @if st.recent_problems.is_empty() {
            p.muted { "None since start." }
        } @else {
            table #problems {
                tr { th { "time (UTC)" } th { "level" } th { "actor" } th { "message" } }
                @for p in &st.recent_problems {
                    tr {
                        td.muted { (clock(&p.time)) }
                        td class=(if p.level == "warn" { "warn" } else { "bad" }) { (p.level) }
                        td { (p.actor) }
                        td { (p.message) @if let Some(e) = &p.error { br; span.muted { (e) } } }
                    }
                }
            }
        }
    }
}

/// What is on the dead-letter topic: the count of each reason with the command that replays it,
/// and the last dead letters.
fn dead_letters_panel(st: &Status, log_search: Option<&LogSearchUrl>) -> Markup {
    let d = &st.dead_letters;
    let p = &d.panel;
    html! {
        h2 #dead-letters { "Dead letters" }
        @if let Some(e) = &p.error {
            p.bad { "The dead-letter topic cannot be read: " (e) }
        } @else if !p.read_to_end {
            p.muted { "Reading the dead-letter topic…" }
        } @else if p.by_reason.is_empty() {
            p.ok { "No dead letters." }
        }
        ul {
            @for (reason, n) in &p.by_reason {
                li { b { (reason) } " " (n) " · " code { (d.replay_commands.get(reason).map_or("", String::as_str)) } }
            }
        }
        @if !p.last.is_empty() {
            table.dlq {
                tr { th { "time" } th { "nasa_id" } th { "reason" } th { "error" } th { "trace" } }
                @for b in &p.last {
                    tr {
                        // As /status writes it (RFC 3339, to the second unless the header had more).
                        td { (b.time.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)).unwrap_or_default()) }
                        td { (b.nasa_id) }
                        td { (b.reason) }
                        td.muted { (b.error) @if b.replay_count > 0 { " · after " (b.replay_count) " replay(s)" } }
                        td.trace { (trace_id(b.trace_id.as_deref(), log_search)) }
                    }
                }
            }
        }
        p.muted {
            "On the topic, replayed ones included; " code { "nasa-ingest dlq list" }
            " shows which were replayed. Fix the cause first (README, \"Dead letters\")."
        }
    }
}

/// A trace id, linked to its lines in the log search when there is one; empty without an id.
fn trace_id(id: Option<&str>, log_search: Option<&LogSearchUrl>) -> Markup {
    match (id, log_search) {
        (None, _) => html! {},
        (Some(id), None) => html! { code { (id) } },
        (Some(id), Some(search)) => html! { a href=(search.for_trace(id)) title="its lines in the log search" { code { (id) } } },
    }
}

fn path_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The latest stored images, each served from Postgres at `/images/{nasa_id}`.
fn gallery_items(gallery: &Gallery, log_search: Option<&LogSearchUrl>) -> Markup {
    match gallery {
        Ok(list) if list.is_empty() => html! { p.muted { "No images stored yet." } },
        Ok(list) => html! {
            @for i in list {
                @let title = i.title.as_deref().unwrap_or(&i.nasa_id);
                figure {
                    img src=(format!("/images/{}", path_segment(&i.nasa_id))) alt=(title) loading="lazy";
                    figcaption {
                        b { (title) } br;
                        span.muted {
                            (i.nasa_id) " · " (i.query.as_deref().unwrap_or("")) " · " (i.byte_size / 1024) " KB · " (i.content_type)
                            " · " (i.created_at.format("%Y-%m-%d %H:%M:%S UTC"))
                        }
                        @if i.trace_id.is_some() { br; span.trace { "trace " (trace_id(i.trace_id.as_deref(), log_search)) } }
                    }
                }
            }
        },
        Err(e) => html! { p.bad { "Gallery unavailable: " (e) } },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(nasa_id: &str, title: &str) -> ImageSummary {
        ImageSummary {
            nasa_id: nasa_id.into(),
            title: Some(title.into()),
            query: Some("moon".into()),
            content_type: "image/jpeg".into(),
            byte_size: 20480,
            created_at: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        }
    }

    #[test]
    fn text_from_the_nasa_api_is_escaped_and_ids_are_path_segments() {
        let st = super::super::status::tests::sources().read(Some(1));
        let html = render(&st, &Ok(vec![image("moon-mosaic-ü 2020/x", r#"<img src=x onerror="a('b')">&"#)]), None).into_string();
        assert!(html.contains(r#"<b>&lt;img src=x onerror=&quot;a('b')&quot;&gt;&amp;</b>"#), "{html}");
        assert!(html.contains(r#"alt="&lt;img src=x onerror=&quot;a('b')&quot;&gt;&amp;""#), "{html}");
        assert!(!html.contains("<img src=x"), "{html}");
        assert!(html.contains(r#"src="/images/moon%2Dmosaic%2D%C3%BC%202020%2Fx""#), "{html}");
    }

    #[test]
    fn the_page_shows_the_status_panels() {
        let sources = super::super::status::tests::sources();
        sources.restarts.record("storer", "crash of <Storer>");
        let html = render(&sources.read(None), &Ok(vec![]), None).into_string();
        assert!(html.starts_with("<!DOCTYPE html><html lang=\"en\">"), "{html}");
        assert!(html.contains("<b>?</b>images in the database"), "Postgres did not answer: {html}");
        assert!(html.contains("<b>storer</b> down · 1 restarts (at "), "{html}");
        assert!(html.contains(" · last: crash of &lt;Storer&gt;</li>"), "{html}");
        assert!(html.contains("<li class=\"bad\">Kafka unreachable</li>"), "not reached the broker yet: {html}");
        assert!(html.contains("<p class=\"muted\">None since start.</p>"), "{html}");
        assert!(html.contains("<p class=\"muted\">Reading the dead-letter topic…</p>"), "{html}");
        assert!(html.contains("<p class=\"muted\">No images stored yet.</p>"), "{html}");
    }

    #[test]
    fn trace_ids_link_to_the_log_search_when_it_is_set() {
        let st = super::super::status::tests::sources().read(Some(1));
        let images = Ok(vec![image("as11-40-5874", "Boot")]);
        let plain = render(&st, &images, None).into_string();
        assert!(plain.contains("trace <code>4bf92f3577b34da6a3ce929d0e0e4736</code>"), "{plain}");
        let search = crate::config::observability::tests::kibana();
        let linked = render(&st, &images, Some(&search)).into_string();
        let href = search.for_trace("4bf92f3577b34da6a3ce929d0e0e4736");
        let escaped = maud::html! { a href=(href) {} }.into_string();
        let attribute = escaped.trim_start_matches("<a ").trim_end_matches("></a>");
        assert!(
            linked.contains(&format!(
                "<a {attribute} title=\"its lines in the log search\"><code>4bf92f3577b34da6a3ce929d0e0e4736</code></a>"
            )),
            "{linked}"
        );
    }
}
