// @generated-style diesel schema; keep in sync with migrations/.

diesel::table! {
    images (id) {
        id -> Int8,
        nasa_id -> Text,
        title -> Nullable<Text>,
        query -> Nullable<Text>,
        image_url -> Text,
        content_type -> Text,
        byte_size -> Int8,
        sha256 -> Text,
        image_bytes -> Bytea,
        event_id -> Nullable<Uuid>,
        kafka_partition -> Nullable<Int4>,
        kafka_offset -> Nullable<Int8>,
        created_at -> Timestamptz,
        trace_id -> Nullable<Text>,
    }
}
