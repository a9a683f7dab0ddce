//! What an image is: the size variants NASA publishes, and recognising image bytes by their magic.

use std::str::FromStr;

/// The sizes NASA publishes for an image, largest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageVariant {
    Orig,
    Large,
    Medium,
    Small,
    Thumb,
}

impl ImageVariant {
    pub const LARGEST_FIRST: [ImageVariant; 5] =
        [ImageVariant::Orig, ImageVariant::Large, ImageVariant::Medium, ImageVariant::Small, ImageVariant::Thumb];

    pub fn as_str(self) -> &'static str {
        match self {
            ImageVariant::Orig => "orig",
            ImageVariant::Large => "large",
            ImageVariant::Medium => "medium",
            ImageVariant::Small => "small",
            ImageVariant::Thumb => "thumb",
        }
    }

    /// This variant, then every smaller one: the order to look for a jpg in.
    pub fn this_and_smaller(self) -> impl Iterator<Item = ImageVariant> {
        Self::LARGEST_FIRST.into_iter().skip_while(move |v| *v != self)
    }
}

impl FromStr for ImageVariant {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Self::LARGEST_FIRST.into_iter().find(|v| v.as_str().eq_ignore_ascii_case(s)).ok_or(())
    }
}

/// The content type of image bytes, from their magic numbers; `None` when they are no image we accept.
pub fn sniff_content_type(bytes: &[u8]) -> Option<&'static str> {
    const SIGNATURES: [(&[u8], &str); 6] = [
        (b"\xFF\xD8\xFF", "image/jpeg"),
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"II*\x00", "image/tiff"),
        (b"MM\x00*", "image/tiff"),
        (b"GIF87a", "image/gif"),
        (b"GIF89a", "image/gif"),
    ];
    if let Some((_, ct)) = SIGNATURES.iter().find(|(magic, _)| bytes.starts_with(magic)) {
        return Some(ct);
    }
    let is_webp = bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP";
    is_webp.then_some("image/webp")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaller_variants_follow_the_wanted_one() {
        let order: Vec<_> = ImageVariant::Medium.this_and_smaller().map(ImageVariant::as_str).collect();
        assert_eq!(order, vec!["medium", "small", "thumb"]);
        assert_eq!("LARGE".parse::<ImageVariant>(), Ok(ImageVariant::Large));
        assert!("huge".parse::<ImageVariant>().is_err());
    }

    #[test]
    fn recognises_each_accepted_format_and_rejects_html() {
        assert_eq!(sniff_content_type(b"\xFF\xD8\xFF\xE0rest"), Some("image/jpeg"));
        assert_eq!(sniff_content_type(b"\x89PNG\r\n\x1a\nrest"), Some("image/png"));
        assert_eq!(sniff_content_type(b"II*\x00rest"), Some("image/tiff"));
        assert_eq!(sniff_content_type(b"MM\x00*rest"), Some("image/tiff"));
        assert_eq!(sniff_content_type(b"GIF89a..."), Some("image/gif"));
        assert_eq!(sniff_content_type(b"RIFF\x10\x00\x00\x00WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff_content_type(b"<!DOCTYPE html>"), None);
        assert_eq!(sniff_content_type(b""), None);
    }
}
