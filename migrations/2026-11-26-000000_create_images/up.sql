CREATE TABLE images (
    id              BIGSERIAL PRIMARY KEY,
    nasa_id         TEXT        NOT NULL UNIQUE,
    title           TEXT,
    query           TEXT,
    image_url       TEXT        NOT NULL,
    content_type    TEXT        NOT NULL,
    byte_size       BIGINT      NOT NULL,
    sha256          TEXT        NOT NULL,
    image_bytes     BYTEA       NOT NULL,
    event_id        UUID,
    kafka_partition INTEGER,
    kafka_offset    BIGINT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Images are already compressed: storing them uncompressed out of line is faster and no larger.
ALTER TABLE images ALTER COLUMN image_bytes SET STORAGE EXTERNAL;

CREATE INDEX images_created_at_idx ON images (created_at DESC);
