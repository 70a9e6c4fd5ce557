//! The built-in dataset catalogue: the 61 datasets of the public Mydex catalogue
//! (`datasets/mydex-datasets.json`, copied verbatim) completed by trove's own definitions
//! (`datasets/trove-fields.json`) for the datasets whose fields the public pages do not
//! list, and the event-time field of every transactional dataset.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::model::{Dataset, DatasetEnvironment, DatasetKind, Field, FieldName, FieldType, MAX_TEXT_BYTES};

const MYDEX: &str = include_str!("../datasets/mydex-datasets.json");
const TROVE: &str = include_str!("../datasets/trove-fields.json");

/// The field every transactional dataset without an event-time field of its own gets; the
/// server fills it with the arrival time when a row leaves it out.
pub const DEFAULT_EVENT_TIME_FIELD: &str = "created_timestamp";

#[derive(Deserialize)]
struct MydexFile {
    datasets: Vec<MydexDataset>,
}

#[derive(Deserialize)]
struct MydexDataset {
    name: String,
    title: String,
    #[serde(default)]
    description: String,
    kind: DatasetKind,
    environment: DatasetEnvironment,
    #[serde(default)]
    fields: Vec<RawField>,
    #[serde(default)]
    partial_field_names: Vec<String>,
}

#[derive(Deserialize)]
struct RawField {
    name: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    description: String,
    #[serde(default, rename = "type")]
    documented_type: String,
    #[serde(default)]
    example: String,
}

#[derive(Deserialize)]
struct TroveFile {
    datasets: BTreeMap<String, TroveDataset>,
}

#[derive(Deserialize)]
struct TroveDataset {
    #[serde(default)]
    event_time_field: Option<String>,
    #[serde(default)]
    fields: Vec<RawField>,
}

impl RawField {
    fn resolve(&self) -> Result<Field, String> {
        Ok(Field {
            name: self.name.parse().map_err(|e| format!("{}: {e}", self.name))?,
            title: if self.title.is_empty() { self.name.clone() } else { self.title.clone() },
            description: self.description.clone(),
            documented_type: self.documented_type.clone(),
            data_type: FieldType::resolve(&self.name, &self.documented_type, &self.example),
            max_bytes: MAX_TEXT_BYTES,
        })
    }
}

/// Every built-in dataset, resolved and checked. Panics only if the files shipped in the
/// binary are inconsistent, which the unit tests below rule out.
pub fn datasets() -> Vec<Dataset> {
    build().unwrap_or_else(|e| panic!("built-in dataset catalogue: {e}"))
}

fn build() -> Result<Vec<Dataset>, String> {
    let mydex: MydexFile = serde_json::from_str(MYDEX).map_err(|e| e.to_string())?;
    let mut trove: TroveFile = serde_json::from_str(TROVE).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(mydex.datasets.len());
    for d in mydex.datasets {
        let extra = trove.datasets.remove(&d.name);
        let mut fields = d.fields.iter().map(RawField::resolve).collect::<Result<Vec<_>, _>>()?;
        let mut seen: std::collections::BTreeSet<String> = fields.iter().map(|f| f.name.to_string()).collect();
        if let Some(extra) = &extra {
            for f in &extra.fields {
                if seen.insert(f.name.clone()) {
                    fields.push(f.resolve()?);
                }
            }
        }
        // Partial names are fields of the dataset even when the public page listed no more.
        for name in &d.partial_field_names {
            if seen.insert(name.clone()) {
                let raw = RawField {
                    name: name.clone(),
                    title: String::new(),
                    description: String::new(),
                    documented_type: "text".into(),
                    example: String::new(),
                };
                fields.push(raw.resolve()?);
            }
        }
        let event_time_field = match d.kind {
            DatasetKind::Metadata => None,
            DatasetKind::Transactional => {
                let name = extra
                    .as_ref()
                    .and_then(|e| e.event_time_field.clone())
                    .unwrap_or_else(|| DEFAULT_EVENT_TIME_FIELD.to_owned());
                if !seen.contains(&name) {
                    fields.push(default_event_time_field(&name)?);
                }
                Some(name.parse::<FieldName>().map_err(|e| format!("{}: {e}", d.name))?)
            }
        };
        let dataset = Dataset {
            name: d.name.parse().map_err(|e| format!("{}: {e}", d.name))?,
            title: d.title,
            description: d.description,
            kind: d.kind,
            environment: d.environment,
            fields,
            event_time_field,
        };
        dataset.validate().map_err(|e| format!("{}: {e}", dataset.name))?;
        out.push(dataset);
    }
    if let Some(name) = trove.datasets.keys().next() {
        return Err(format!("trove-fields.json names {name}, which the catalogue does not have"));
    }
    Ok(out)
}

fn default_event_time_field(name: &str) -> Result<Field, String> {
    RawField {
        name: name.to_owned(),
        title: "Created Timestamp".into(),
        description: "When the event happened, in epoch seconds; the arrival time when the row leaves it out.".into(),
        documented_type: "int".into(),
        example: String::new(),
    }
    .resolve()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_61_datasets_resolve_with_typed_schemas() {
        let all = datasets();
        assert_eq!(all.len(), 61);
        let raw: serde_json::Value = serde_json::from_str(MYDEX).unwrap();
        for (d, raw) in all.iter().zip(raw["datasets"].as_array().unwrap()) {
            assert_eq!(d.name.as_str(), raw["name"]);
            assert!(d.data_fields().count() >= 2, "{} has too few fields", d.name);
            // Every name the public catalogue lists is a field of its dataset.
            let listed = raw["fields"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap());
            let partial = raw.get("partial_field_names").and_then(|p| p.as_array()).into_iter().flatten();
            for name in listed.chain(partial.map(|p| p.as_str().unwrap())) {
                assert!(d.field(name).is_some(), "{} lacks {name}", d.name);
            }
        }
    }

    #[test]
    fn transactional_datasets_have_a_timestamp_event_time() {
        for d in datasets().iter().filter(|d| d.kind == DatasetKind::Transactional) {
            let t = d.event_time_field.as_ref().expect("event time");
            assert_eq!(d.field(t.as_str()).unwrap().data_type, FieldType::Timestamp, "{}", d.name);
        }
        let energy = datasets().into_iter().find(|d| d.name.as_str() == "ds_energy_consumption").unwrap();
        assert_eq!(energy.event_time_field.as_ref().unwrap().as_str(), "field_energy_reading_timestamp");
        assert_eq!(energy.field("field_energy_reading_value").unwrap().data_type, FieldType::Float);
    }

    #[test]
    fn field_types_are_not_all_text() {
        let all = datasets();
        let types: std::collections::BTreeSet<_> =
            all.iter().flat_map(|d| d.fields.iter().map(|f| f.data_type.as_str())).collect();
        for t in ["integer", "float", "decimal", "text", "json", "timestamp"] {
            assert!(types.contains(t), "no {t} field anywhere");
        }
    }
}

/// `docs/datasets.md`: every built-in dataset with its resolved field types, generated
/// from the same code that serves them (a unit test keeps the file current).
#[cfg(test)]
fn render_docs() -> String {
    use std::fmt::Write;
    let mut s = String::from(
        "# The dataset catalogue\n\n\
         Generated from `catalog/datasets/*.json` by `catalog/src/builtin.rs` \
         (`TROVE_BLESS=1 cargo test -p trove-catalog docs` rewrites it). The public Mydex \
         catalogue lists fields for 13 datasets; trove defines the others \
         (`catalog/datasets/trove-fields.json`). Types are resolved as [api.md](api.md) (\"Rows and values\") says. \
         Transactional rows also carry the reserved `member_uid`, `instance`, `id` and `ds_id`.\n\n",
    );
    for d in datasets() {
        let kind = match d.kind {
            DatasetKind::Metadata => "metadata".to_owned(),
            DatasetKind::Transactional => {
                format!("transactional, event time `{}`", d.event_time_field.as_ref().map_or("", |f| f.as_str()))
            }
        };
        let _ = writeln!(s, "## `{}`: {}\n\n{} ({kind})\n", d.name, d.title, d.description.trim());
        let _ = writeln!(s, "| field | type | documented as | description |\n|---|---|---|---|");
        for f in &d.fields {
            let desc = f.description.replace('|', "/").replace('\n', " ");
            let _ = writeln!(
                s,
                "| `{}` | {} | {} | {} |",
                f.name,
                f.data_type.as_str(),
                f.documented_type.replace('|', "/"),
                desc
            );
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod docs {
    #[test]
    fn docs_datasets_md_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/datasets.md");
        let want = super::render_docs();
        if std::env::var("TROVE_BLESS").is_ok() {
            std::fs::write(path, &want).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(have == want, "docs/datasets.md is stale: run TROVE_BLESS=1 cargo test -p trove-catalog docs");
    }
}
