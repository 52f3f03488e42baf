//! Hand-written XLSX packages for tests that need exact control of the XML (cell types,
//! inline strings, the 1904 date system, hostile content). Real writers are covered with
//! rust_xlsxwriter and the committed fixtures.

use std::io::Write;

use zip::write::SimpleFileOptions;

pub struct RawSheet<'a> {
    pub name: &'a str,
    pub hidden: bool,
    /// The rows: what goes inside `<sheetData>`.
    pub rows: String,
}

/// Cell formats (the `s` attribute): 0 general, 1 a built-in date (id 14), 2 a custom
/// date-time `yyyy-mm-dd hh:mm`, 3 two decimals `0.00`.
const STYLES: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<styleSheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><numFmts count="1"><numFmt numFmtId="164" formatCode="yyyy\-mm\-dd hh:mm"/></numFmts><cellStyleXfs count="1"><xf numFmtId="0"/></cellStyleXfs><cellXfs count="4"><xf numFmtId="0" xfId="0"/><xf numFmtId="14" xfId="0" applyNumberFormat="1"/><xf numFmtId="164" xfId="0" applyNumberFormat="1"/><xf numFmtId="2" xfId="0" applyNumberFormat="1"/></cellXfs></styleSheet>"#;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A zip of exactly these parts (name → content), in this order: for packages laid out
/// differently from Excel's (a workbook at the root, part names in another case).
pub fn parts_xlsx(parts: &[(&str, String)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, body) in parts {
        zip.start_file(*name, opts).unwrap();
        zip.write_all(body.as_bytes()).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// A relationships part: `(id, type, target)`, the type's last segment only (`worksheet`,
/// `officeDocument`, `sharedStrings`, `styles`).
pub fn rels_xml(rels: &[(&str, &str, &str)]) -> String {
    let mut xml = String::from(
        r#"<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">"#,
    );
    for (id, ty, target) in rels {
        xml.push_str(&format!(r#"<Relationship Id="{id}" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/{ty}" Target="{target}"/>"#));
    }
    xml.push_str("</Relationships>");
    xml
}

/// A workbook part with these `(name, relationship id)` sheets, in the 1900 date system.
pub fn workbook_xml(sheets: &[(&str, &str)]) -> String {
    let mut xml = String::from(
        r#"<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"><workbookPr/><sheets>"#,
    );
    for (i, (name, id)) in sheets.iter().enumerate() {
        xml.push_str(&format!(
            r#"<sheet name="{}" sheetId="{}" r:id="{id}"/>"#,
            esc(name),
            i + 1
        ));
    }
    xml.push_str("</sheets></workbook>");
    xml
}

/// A worksheet part; `rows` goes inside `<sheetData>`.
pub fn sheet_xml(rows: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>{rows}</sheetData></worksheet>"#
    )
}

/// A shared-string table.
pub fn shared_strings_xml(shared: &[&str]) -> String {
    let mut sst = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" count="{0}" uniqueCount="{0}">"#,
        shared.len()
    );
    for s in shared {
        sst.push_str(&format!(
            "<si><t xml:space=\"preserve\">{}</t></si>",
            esc(s)
        ));
    }
    sst.push_str("</sst>");
    sst
}

/// The styles part of [`raw_xlsx`]: cell formats 0 general, 1 a date, 2 a date-time, 3 `0.00`.
pub fn styles_xml() -> String {
    STYLES.to_string()
}

/// Builds an XLSX package. `prologue` is put before the root element of the first sheet (a
/// DOCTYPE, say).
pub fn raw_xlsx(sheets: &[RawSheet], shared: &[&str], date1904: bool, prologue: &str) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let mut put = |name: &str, body: &str| {
        zip.start_file(name, opts).unwrap();
        zip.write_all(body.as_bytes()).unwrap();
    };
    let mut types = String::from(
        r#"<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>"#,
    );
    for i in 1..=sheets.len() {
        types.push_str(&format!(r#"<Override PartName="/xl/worksheets/sheet{i}.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>"#));
    }
    types.push_str("</Types>");
    put("[Content_Types].xml", &types);
    put(
        "_rels/.rels",
        r#"<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>"#,
    );
    let mut wb = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"><workbookPr date1904="{}"/><sheets>"#,
        if date1904 { "1" } else { "0" }
    );
    let mut rels = String::from(
        r#"<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">"#,
    );
    for (i, s) in sheets.iter().enumerate() {
        let n = i + 1;
        let state = if s.hidden { r#" state="hidden""# } else { "" };
        wb.push_str(&format!(
            r#"<sheet name="{}" sheetId="{n}"{state} r:id="rId{n}"/>"#,
            esc(s.name)
        ));
        rels.push_str(&format!(r#"<Relationship Id="rId{n}" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet{n}.xml"/>"#));
    }
    wb.push_str("</sheets></workbook>");
    let k = sheets.len();
    rels.push_str(&format!(r#"<Relationship Id="rId{}" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/styles" Target="styles.xml"/>"#, k + 1));
    if !shared.is_empty() {
        rels.push_str(&format!(r#"<Relationship Id="rId{}" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/sharedStrings" Target="sharedStrings.xml"/>"#, k + 2));
    }
    rels.push_str("</Relationships>");
    put("xl/workbook.xml", &wb);
    put("xl/_rels/workbook.xml.rels", &rels);
    put("xl/styles.xml", STYLES);
    if !shared.is_empty() {
        put("xl/sharedStrings.xml", &shared_strings_xml(shared));
    }
    for (i, s) in sheets.iter().enumerate() {
        let head = if i == 0 { prologue } else { "" };
        put(
            &format!("xl/worksheets/sheet{}.xml", i + 1),
            &format!(
                r#"<?xml version="1.0" encoding="UTF-8"?>{head}<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>{}</sheetData></worksheet>"#,
                s.rows
            ),
        );
    }
    zip.finish().unwrap().into_inner()
}

/// One sheet named `Sheet1`.
pub fn one_sheet(rows: &str, shared: &[&str]) -> Vec<u8> {
    raw_xlsx(
        &[RawSheet {
            name: "Sheet1",
            hidden: false,
            rows: rows.to_string(),
        }],
        shared,
        false,
        "",
    )
}

/// An inline-string cell.
pub fn is(r: &str, text: &str) -> String {
    format!(
        r#"<c r="{r}" t="inlineStr"><is><t>{}</t></is></c>"#,
        esc(text)
    )
}

/// A header row of inline strings in row 1.
pub fn header(cols: &[&str]) -> String {
    let cells: String = cols
        .iter()
        .enumerate()
        .map(|(i, c)| is(&format!("{}1", (b'A' + i as u8) as char), c))
        .collect();
    format!(r#"<row r="1">{cells}</row>"#)
}
