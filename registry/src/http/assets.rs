//! The web page, embedded in the binary so that `albef serve` needs no files on disk: plain
//! HTML, CSS and JavaScript from `dashboards/web/`, no build step.
use axum::http::header;
use axum::response::IntoResponse;

pub(super) async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../../../dashboards/web/index.html"),
    )
}

pub(super) async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../../dashboards/web/app.js"),
    )
}

pub(super) async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../../dashboards/web/style.css"),
    )
}
