//! XMP sidecars (`--format xmp`): one `<name>.<ext>.xmp` per image (the digiKam and darktable
//! naming), keywords in `dc:subject` and, under a root (`--keyword-root`, default `cls`), in
//! `lr:hierarchicalSubject` (`cls|cat`).
//!
//! An existing sidecar is merged, never clobbered: it is parsed with `quick-xml` (namespaces
//! resolved, so any prefix works), every event is written back as it was, and only the keywords
//! it lacks are added: to the `rdf:Bag` of its `dc:subject` (and `lr:hierarchicalSubject`), or in
//! a new such property at the end of its first `rdf:Description` when it has none. A file that is
//! not well-formed XML, or has no `rdf:RDF`, is left alone (an error row says why). Sidecars are
//! written atomically (`cls_core::fsio`).
//!
//! Where: under `--out DIR`, mirroring the images' names (`DIR/a/b.jpg.xmp`); with `--out .`,
//! beside each image. Nothing is written outside that folder: a name that climbs out (`..`) is
//! refused, and neither a folder on the way nor the sidecar itself may be a symbolic link (or
//! anything but a folder and a regular file).

use anyhow::{bail, Context, Result};
use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;
use quick_xml::Writer;
use std::path::{Path, PathBuf};

const RDF: &[u8] = b"http://www.w3.org/1999/02/22-rdf-syntax-ns#";
const DC: &[u8] = b"http://purl.org/dc/elements/1.1/";
const LR: &[u8] = b"http://ns.adobe.com/lightroom/1.0/";

/// The largest existing sidecar read (a sidecar is a few kB).
const MAX_SIDECAR_BYTES: u64 = 16 << 20;

/// A new sidecar.
pub fn new_sidecar(subjects: &[String], hierarchical: &[String]) -> Vec<u8> {
    let mut out = String::from(
        "<?xpacket begin=\"\u{feff}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>\n\
         <x:xmpmeta xmlns:x=\"adobe:ns:meta/\" x:xmptk=\"cls-infer\">\n \
         <rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">\n  \
         <rdf:Description rdf:about=\"\"\n    xmlns:dc=\"http://purl.org/dc/elements/1.1/\"\n    \
         xmlns:lr=\"http://ns.adobe.com/lightroom/1.0/\">\n",
    );
    for (prop, values) in [("dc:subject", subjects), ("lr:hierarchicalSubject", hierarchical)] {
        out.push_str(&format!("   <{prop}>\n    <rdf:Bag>\n"));
        for v in values {
            out.push_str(&format!("     <rdf:li>{}</rdf:li>\n", quick_xml::escape::escape(v.as_str())));
        }
        out.push_str(&format!("    </rdf:Bag>\n   </{prop}>\n"));
    }
    out.push_str("  </rdf:Description>\n </rdf:RDF>\n</x:xmpmeta>\n<?xpacket end=\"w\"?>\n");
    out.into_bytes()
}

/// What a property (dc:subject, lr:hierarchicalSubject) of an existing sidecar holds.
#[derive(Default, Debug)]
struct Found {
    present: bool,
    has_list: bool,
    values: Vec<String>,
}

fn is(ns: &ResolveResult, uri: &[u8]) -> bool {
    matches!(ns, ResolveResult::Bound(n) if n.as_ref() == uri)
}

fn is_list(ns: &ResolveResult, local: &[u8]) -> bool {
    is(ns, RDF) && matches!(local, b"Bag" | b"Seq" | b"Alt")
}

/// Which property an element is: 0 dc:subject, 1 lr:hierarchicalSubject.
fn property(ns: &ResolveResult, local: &[u8]) -> Option<usize> {
    if is(ns, DC) && local == b"subject" {
        Some(0)
    } else if is(ns, LR) && local == b"hierarchicalSubject" {
        Some(1)
    } else {
        None
    }
}

fn xml_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("not well-formed XML: {e}")
}

/// The text of an entity reference (`&amp;` → `&`).
fn general_ref(e: &quick_xml::events::BytesRef) -> String {
    if let Ok(Some(c)) = e.resolve_char_ref() {
        return c.to_string();
    }
    match e.as_ref() {
        b"amp" => "&",
        b"lt" => "<",
        b"gt" => ">",
        b"quot" => "\"",
        b"apos" => "'",
        _ => "",
    }
    .to_string()
}

/// Pass 1: the two properties' values, whether the document has an `rdf:RDF` and an
/// `rdf:Description`, and the prefix its `rdf:RDF` is written with (`rdf:`).
fn survey(xml: &[u8]) -> Result<([Found; 2], bool, bool, String)> {
    let mut rdf_prefix = String::from("rdf:");
    let mut reader = NsReader::from_reader(xml);
    let mut found: [Found; 2] = Default::default();
    let (mut has_rdf, mut has_description) = (false, false);
    // Inside property p; inside its list; inside an li (collecting its text).
    let mut in_prop: Option<(usize, usize)> = None; // (property, depth at its start)
    let mut li: Option<String> = None;
    let mut depth = 0usize;
    loop {
        let (ns, event) = reader.read_resolved_event().map_err(xml_error)?;
        match &event {
            Event::Start(e) | Event::Empty(e) => {
                let empty = matches!(event, Event::Empty(_));
                let local = e.local_name();
                let local = local.as_ref();
                if is(&ns, RDF) && local == b"RDF" && !has_rdf {
                    has_rdf = true;
                    rdf_prefix = prefix_of(e.name().as_ref());
                }
                if is(&ns, RDF) && local == b"Description" {
                    has_description = true;
                }
                if let Some(p) = property(&ns, local) {
                    found[p].present = true;
                    if !empty {
                        in_prop = Some((p, depth));
                    }
                } else if let Some((p, _)) = in_prop {
                    if is_list(&ns, local) {
                        found[p].has_list = true;
                    } else if is(&ns, RDF) && local == b"li" && !empty {
                        li = Some(String::new());
                    }
                }
                if !empty {
                    depth += 1;
                }
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                if let (Some((p, _)), Some(text)) = (in_prop, li.take()) {
                    found[p].values.push(text);
                }
                if in_prop.is_some_and(|(_, d)| d == depth) {
                    in_prop = None;
                }
            }
            Event::Text(t) => {
                if let Some(text) = li.as_mut() {
                    text.push_str(&t.xml_content().map_err(xml_error)?);
                }
            }
            Event::CData(t) => {
                if let Some(text) = li.as_mut() {
                    text.push_str(&String::from_utf8_lossy(t.as_ref()));
                }
            }
            Event::GeneralRef(r) => {
                if let Some(text) = li.as_mut() {
                    text.push_str(&general_ref(r));
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if depth != 0 {
        bail!("not well-formed XML: the document ends inside an element");
    }
    Ok((found, has_rdf, has_description, rdf_prefix))
}

/// The prefix of a qualified name (`rdf` of `rdf:Bag`), with its colon; empty when none.
fn prefix_of(name: &[u8]) -> String {
    match name.iter().position(|&b| b == b':') {
        Some(i) => format!("{}:", String::from_utf8_lossy(&name[..i])),
        None => String::new(),
    }
}

/// Write `<{rdf}li>value</{rdf}li>` for each value.
fn write_items(w: &mut Writer<Vec<u8>>, rdf: &str, values: &[&String]) -> Result<()> {
    let li = format!("{rdf}li");
    for v in values {
        w.write_event(Event::Start(BytesStart::new(li.as_str())))?;
        w.write_event(Event::Text(BytesText::new(v)))?;
        w.write_event(Event::End(BytesEnd::new(li.as_str())))?;
    }
    Ok(())
}

/// Write a whole property (`dc:subject` or `lr:hierarchicalSubject`) with its own namespace
/// declaration, so it needs none from the document.
fn write_property(w: &mut Writer<Vec<u8>>, p: usize, rdf: &str, values: &[&String]) -> Result<()> {
    let (name, xmlns, uri) = match p {
        0 => ("dc:subject", "xmlns:dc", "http://purl.org/dc/elements/1.1/"),
        _ => ("lr:hierarchicalSubject", "xmlns:lr", "http://ns.adobe.com/lightroom/1.0/"),
    };
    let mut start = BytesStart::new(name);
    start.push_attribute((xmlns, uri));
    w.write_event(Event::Start(start))?;
    let bag = format!("{rdf}Bag");
    w.write_event(Event::Start(BytesStart::new(bag.as_str())))?;
    write_items(w, rdf, values)?;
    w.write_event(Event::End(BytesEnd::new(bag.as_str())))?;
    w.write_event(Event::End(BytesEnd::new(name)))?;
    Ok(())
}

/// Merge `wanted[0]` (subjects) and `wanted[1]` (hierarchical subjects) into the sidecar `xml`.
/// Returns `None` when it already holds every keyword (nothing to write).
pub fn merge(xml: &[u8], wanted: [&[String]; 2]) -> Result<Option<Vec<u8>>> {
    let (found, has_rdf, has_description, rdf_prefix) = survey(xml)?;
    if !has_rdf {
        bail!("an XML file without rdf:RDF, not an XMP sidecar");
    }
    let missing: Vec<Vec<&String>> =
        (0..2).map(|p| wanted[p].iter().filter(|v| !found[p].values.contains(v)).collect()).collect();
    if missing.iter().all(Vec::is_empty) {
        return Ok(None);
    }
    let mut reader = NsReader::from_reader(xml);
    let mut w = Writer::new(Vec::with_capacity(xml.len() + 256));
    let mut depth = 0usize;
    let mut in_prop: Option<(usize, usize, String)> = None; // (property, depth, its rdf prefix)
    let mut list_depth: Option<usize> = None;
    let mut description_done = false; // the first rdf:Description got what was absent
    let mut description_depth: Option<usize> = None;
    // What the first Description must receive at its end: properties absent from the document.
    let absent: Vec<usize> = (0..2).filter(|&p| !found[p].present && !missing[p].is_empty()).collect();
    // Each property gets the missing keywords once (should the document hold it twice).
    let mut added = [false; 2];
    loop {
        let (ns, event) = reader.read_resolved_event().map_err(xml_error)?;
        match &event {
            Event::Start(e) => {
                let local = e.local_name();
                if let Some(p) = property(&ns, local.as_ref()) {
                    in_prop = Some((p, depth, String::new()));
                } else if let Some((_, d, rdf)) = in_prop.as_mut() {
                    if is_list(&ns, local.as_ref()) && depth == *d + 1 {
                        *rdf = prefix_of(e.name().as_ref());
                        list_depth = Some(depth);
                    }
                }
                if is(&ns, RDF) && local.as_ref() == b"Description" && description_depth.is_none() && !description_done
                {
                    description_depth = Some(depth);
                }
                w.write_event(event.borrow())?;
                depth += 1;
            }
            Event::Empty(e) => {
                let local = e.local_name();
                let rdf = prefix_of(e.name().as_ref());
                if let Some(p) = property(&ns, local.as_ref()).filter(|&p| !added[p]) {
                    added[p] = true;
                    // `<dc:subject/>`: open it, give it a list, close it.
                    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                    w.write_event(Event::Start(e.borrow()))?;
                    let bag = format!("{rdf_prefix}Bag");
                    w.write_event(Event::Start(BytesStart::new(bag.as_str())))?;
                    write_items(&mut w, &rdf_prefix, &missing[p])?;
                    w.write_event(Event::End(BytesEnd::new(bag.as_str())))?;
                    w.write_event(Event::End(BytesEnd::new(name.as_str())))?;
                    continue;
                }
                if is(&ns, RDF) && local.as_ref() == b"Description" && !description_done && !absent.is_empty() {
                    // `<rdf:Description .../>`: the same element, opened, with the new properties.
                    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                    w.write_event(Event::Start(e.borrow()))?;
                    for &p in &absent {
                        write_property(&mut w, p, &rdf, &missing[p])?;
                    }
                    w.write_event(Event::End(BytesEnd::new(name.as_str())))?;
                    description_done = true;
                    continue;
                }
                w.write_event(event.borrow())?;
            }
            Event::End(e) => {
                depth -= 1;
                if list_depth == Some(depth) {
                    if let Some((p, _, rdf)) = &in_prop {
                        if !added[*p] {
                            write_items(&mut w, rdf, &missing[*p])?;
                            added[*p] = true;
                        }
                    }
                    list_depth = None;
                } else if let Some((p, d, rdf)) = &in_prop {
                    if *d == depth {
                        if !found[*p].has_list && !added[*p] {
                            added[*p] = true;
                            // A property without a list: give it one.
                            let rdf = if rdf.is_empty() { rdf_prefix.clone() } else { rdf.clone() };
                            let bag = format!("{rdf}Bag");
                            w.write_event(Event::Start(BytesStart::new(bag.as_str())))?;
                            write_items(&mut w, &rdf, &missing[*p])?;
                            w.write_event(Event::End(BytesEnd::new(bag.as_str())))?;
                        }
                        in_prop = None;
                    }
                }
                if description_depth == Some(depth) {
                    let rdf = prefix_of(e.name().as_ref());
                    for &p in &absent {
                        write_property(&mut w, p, &rdf, &missing[p])?;
                    }
                    description_depth = None;
                    description_done = true;
                }
                if !has_description && !description_done && is(&ns, RDF) && e.local_name().as_ref() == b"RDF" {
                    // No rdf:Description at all: one, with both properties.
                    let rdf = prefix_of(e.name().as_ref());
                    let name = format!("{rdf}Description");
                    let mut start = BytesStart::new(name.as_str());
                    start.push_attribute((format!("{rdf}about").as_str(), ""));
                    w.write_event(Event::Start(start))?;
                    for (p, props) in missing.iter().enumerate().take(2) {
                        write_property(&mut w, p, &rdf, props)?;
                    }
                    w.write_event(Event::End(BytesEnd::new(name.as_str())))?;
                    description_done = true;
                }
                w.write_event(event.borrow())?;
            }
            Event::Eof => break,
            _ => w.write_event(event.borrow())?,
        }
    }
    Ok(Some(w.into_inner()))
}

/// Where the sidecar of an image goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// Under this folder, mirroring the names.
    Under(PathBuf),
    /// Beside each image.
    Beside,
}

/// `name` + `.xmp`.
fn with_xmp(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".xmp");
    PathBuf::from(s)
}

/// The sidecar path of an image named `name` (the path relative to the input's base) at `path`,
/// with the folders on the way made (each checked to be a real folder, not a link).
pub fn sidecar_path(place: &Place, name: &Path, path: &Path) -> Result<PathBuf> {
    let target = match place {
        Place::Beside => with_xmp(path),
        Place::Under(root) => {
            let rel = crate::inputs::contained(name)
                .with_context(|| format!("the name {} climbs out of --out (..): no sidecar written", name.display()))?;
            let mut dir = root.clone();
            let parts: Vec<_> = rel.components().collect();
            for part in &parts[..parts.len() - 1] {
                dir.push(part);
                match std::fs::symlink_metadata(&dir) {
                    Ok(m) if m.file_type().is_dir() => {}
                    Ok(m) if m.file_type().is_symlink() => {
                        bail!("{} is a symbolic link: no sidecar is written through it", dir.display())
                    }
                    Ok(_) => bail!("{} is not a folder", dir.display()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::create_dir(&dir) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
                        Err(e) => return Err(e).with_context(|| format!("cannot make the folder {}", dir.display())),
                    },
                    Err(e) => return Err(e).with_context(|| dir.display().to_string()),
                }
            }
            with_xmp(&root.join(rel))
        }
    };
    Ok(target)
}

/// The bytes to write at `target`: a new sidecar, or the existing one merged (`None`: it holds
/// every keyword already). An error says why nothing may be written there.
pub fn prepare(target: &Path, subjects: &[String], hierarchical: &[String]) -> Result<Option<Vec<u8>>> {
    let existing = match std::fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_symlink() => {
            bail!("{} is a symbolic link: not followed, not replaced", target.display())
        }
        Ok(m) if !m.file_type().is_file() => bail!("{} exists and is not a regular file", target.display()),
        Ok(m) if m.len() > MAX_SIDECAR_BYTES => {
            bail!("{} is {} bytes, more than a sidecar may be: not changed", target.display(), m.len())
        }
        Ok(_) => Some(std::fs::read(target).with_context(|| format!("cannot read {}", target.display()))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| target.display().to_string()),
    };
    match existing {
        None => Ok(Some(new_sidecar(subjects, hierarchical))),
        Some(xml) => merge(&xml, [subjects, hierarchical])
            .with_context(|| format!("the existing sidecar {} was left as it is", target.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    /// The `li` values of each property, read back with the survey.
    fn values(xml: &[u8]) -> [Vec<String>; 2] {
        let (found, _, _, _) = survey(xml).unwrap();
        let [a, b] = found;
        [a.values, b.values]
    }

    #[test]
    fn a_new_sidecar_reads_back() {
        let xml = new_sidecar(&s(&["cat", "a & b"]), &s(&["cls|cat", "cls|a & b"]));
        assert_eq!(values(&xml), [s(&["cat", "a & b"]), s(&["cls|cat", "cls|a & b"])]);
        assert!(merge(&xml, [&s(&["cat"]), &s(&["cls|cat"])]).unwrap().is_none(), "nothing new: nothing written");
    }

    #[test]
    fn merges_into_existing_bags_and_keeps_the_rest() {
        let xml = br#"<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:d="http://purl.org/dc/elements/1.1/" xmp:Rating="3">
   <d:subject>
    <rdf:Bag>
     <rdf:li>holiday</rdf:li>
     <rdf:li>cat</rdf:li>
    </rdf:Bag>
   </d:subject>
   <d:title><rdf:Alt><rdf:li xml:lang="x-default">Tom &amp; Jerry</rdf:li></rdf:Alt></d:title>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>"#;
        let merged = merge(xml, [&s(&["cat", "dog"]), &s(&["cls|cat", "cls|dog"])]).unwrap().unwrap();
        let text = String::from_utf8(merged.clone()).unwrap();
        assert_eq!(values(&merged), [s(&["holiday", "cat", "dog"]), s(&["cls|cat", "cls|dog"])]);
        for kept in ["xmp:Rating=\"3\"", "Tom &amp; Jerry", "XMP Core 4.4.0-Exiv2", "<?xpacket end=\"w\"?>", "xml:lang"]
        {
            assert!(text.contains(kept), "{kept} lost:\n{text}");
        }
        // Merging again adds nothing.
        assert!(merge(&merged, [&s(&["dog"]), &s(&["cls|dog"])]).unwrap().is_none());
    }

    #[test]
    fn self_closing_description_and_missing_description() {
        let xml = br#"<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="5"/></rdf:RDF></x:xmpmeta>"#;
        let merged = merge(xml, [&s(&["owl"]), &s(&["cls|owl"])]).unwrap().unwrap();
        assert_eq!(values(&merged), [s(&["owl"]), s(&["cls|owl"])]);
        assert!(String::from_utf8_lossy(&merged).contains("xmp:Rating=\"5\""));
        let bare = br#"<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"></rdf:RDF></x:xmpmeta>"#;
        let merged = merge(bare, [&s(&["owl"]), &s(&["cls|owl"])]).unwrap().unwrap();
        assert_eq!(values(&merged), [s(&["owl"]), s(&["cls|owl"])]);
    }

    #[test]
    fn refuses_what_it_cannot_merge() {
        for bad in [&b"<x:xmpmeta><rdf:RDF>"[..], b"not xml at all <", b"<a><b></a>", b"<plain/>"] {
            assert!(merge(bad, [&s(&["x"]), &s(&["cls|x"])]).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn sidecars_stay_under_their_folder() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let place = Place::Under(out.clone());
        let p = sidecar_path(&place, Path::new("a/b.jpg"), Path::new("/x/a/b.jpg")).unwrap();
        assert_eq!(p, out.join("a/b.jpg.xmp"));
        assert!(sidecar_path(&place, Path::new("../../x.jpg"), Path::new("x.jpg")).is_err());
        assert_eq!(sidecar_path(&place, Path::new("/etc/x.jpg"), Path::new("x")).unwrap(), out.join("etc/x.jpg.xmp"));
        std::os::unix::fs::symlink(dir.path(), out.join("link")).unwrap();
        let err = sidecar_path(&place, Path::new("link/x.jpg"), Path::new("x")).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        std::os::unix::fs::symlink(dir.path().join("elsewhere.xmp"), out.join("s.jpg.xmp")).unwrap();
        let err = prepare(&out.join("s.jpg.xmp"), &s(&["a"]), &s(&["cls|a"])).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(!dir.path().join("elsewhere.xmp").exists());
        assert_eq!(place, Place::Under(out));
    }
}
