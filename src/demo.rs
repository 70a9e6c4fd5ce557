//! `trove demo`: the demo fixture of docs/api.md, seeded into a new data directory, and its
//! credentials printed for a person (text) or a program (`--json`). The end-to-end tests
//! start from the same fixture through [`seed`].

use std::collections::BTreeMap;

use catalog::{
    Catalog, ConnectionEnvironment, ConnectionId, ConnectionTerms, DatasetGrant, GdprDeclaration, MemberId, Secret,
};
use serde::Serialize;

use crate::Error;
use crate::config::DemoConfig;

/// The credentials of a seeded fixture, as `trove demo --json` prints them.
#[derive(Debug, Clone, Serialize)]
pub struct DemoCredentials {
    pub admin_token: String,
    pub subscribers: Vec<DemoSubscriber>,
    pub members: Vec<DemoMember>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoSubscriber {
    pub name: String,
    pub client_id: String,
    pub client_secret: String,
    pub api_key: String,
    pub connection: DemoConnection,
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoConnection {
    pub id: i64,
    pub nid: i64,
    pub key: String,
    pub environment: ConnectionEnvironment,
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoMember {
    pub uid: catalog::MemberId,
    pub mydexid: String,
    pub secret: String,
    /// Member connection keys by the connection's `nid`.
    pub keys: BTreeMap<String, DemoKey>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoKey {
    pub con_id: String,
    pub key: String,
}

/// Terms reading and writing every field of `datasets`, or reading all but `except`.
fn terms(name: &str, company: &str, purpose: &str, datasets: &[(&str, &[&str], bool)]) -> ConnectionTerms {
    ConnectionTerms {
        name: name.into(),
        description: format!("{company}'s demo connection"),
        company_name: company.into(),
        contact_name: "Demo Contact".into(),
        contact_email: format!("privacy@{}.example", name.to_ascii_lowercase()),
        contact_phone: String::new(),
        logo_url: String::new(),
        callback_url: String::new(),
        datasets: datasets
            .iter()
            .map(|(dataset, read, write)| {
                let fields = |fs: &[&str]| fs.iter().map(|f| f.to_string()).collect();
                let grant = DatasetGrant {
                    read: fields(read),
                    write: if *write { fields(&["*"]) } else { Default::default() },
                };
                (dataset.parse().expect("demo dataset names are valid"), grant)
            })
            .collect(),
        purposes: vec![purpose.into()],
        gdpr: GdprDeclaration {
            lawful_basis: "consent".into(),
            statement: format!("{company} processes this data with the member's consent."),
        },
    }
}

/// The energy fields insight-ltd may read: all but the appliance name.
const INSIGHT_FIELDS: &[&str] = &[
    "created_timestamp",
    "field_energy_homeid",
    "field_energy_reading_timestamp",
    "field_energy_reading_value",
    "field_energy_source_index_id",
    "field_energy_source_type",
    "updated_timestamp",
];

/// Seeds the fixture into an empty catalog: `members` members (uids 1..N), three
/// subscribers with one live connection each, and the members' agreements.
pub async fn seed(catalog: &Catalog, admin_token: &Secret, members: u32) -> Result<DemoCredentials, Error> {
    // In chunks, each one catalog transaction: a million members seed in seconds, and no
    // transaction holds the catalog's writer for long.
    const CHUNK: u32 = 50_000;
    let mut demo_members = Vec::with_capacity(members as usize);
    for first in (1..=members).step_by(CHUNK as usize) {
        let mydexids: Vec<String> = (first..=members.min(first + CHUNK - 1)).map(|i| format!("member{i}")).collect();
        for (m, secret) in catalog.create_members(&mydexids).await? {
            demo_members.push(DemoMember {
                uid: m.uid,
                mydexid: m.mydexid,
                secret: secret.expose().into(),
                keys: BTreeMap::new(),
            });
        }
    }
    let all: &[&str] = &["*"];
    let fixture: [(&str, ConnectionTerms, std::ops::RangeInclusive<u32>); 3] = [
        (
            "energy-co",
            terms(
                "energy-co",
                "Energy Co",
                "Show members their energy use and bills",
                &[
                    ("ds_energy_consumption", all, true),
                    ("ds_browsing_history", all, true),
                    ("ds_bank_account_transactions", all, true),
                    ("ds_personal_details", all, true),
                ],
            ),
            1..=members - 1,
        ),
        (
            "insight-ltd",
            terms(
                "insight-ltd",
                "Insight Ltd",
                "Energy-saving insights",
                &[("ds_energy_consumption", INSIGHT_FIELDS, false)],
            ),
            1..=1,
        ),
        (
            "care-services",
            terms(
                "care-services",
                "Care Services",
                "Manage referrals to care services",
                &[("ds_referrals", all, true), ("ds_personal_details", all, true)],
            ),
            1..=members - 1,
        ),
    ];
    let mut subscribers = Vec::new();
    for (name, terms, agreed) in fixture {
        let (subscriber, creds) = catalog.create_subscriber(name).await?;
        let connection = catalog.create_connection(subscriber.id, terms).await?;
        let id: ConnectionId = connection.id;
        catalog.submit_connection(id).await?;
        let (connection, key) = catalog.approve_connection(id, None).await?;
        let key = key.expect("a first approval issues the connection key");
        catalog.request_promotion(id).await?;
        let connection = catalog.promote_connection(connection.id).await?;
        let nid = connection.nid.expect("approved connections have a nid");
        let agreed: Vec<u32> = agreed.collect();
        for chunk in agreed.chunks(CHUNK as usize) {
            let uids: Vec<MemberId> = chunk.iter().map(|uid| demo_members[*uid as usize - 1].uid).collect();
            for (agreement, member_key) in catalog.approve_agreements(&uids, id).await? {
                demo_members[agreement.member.get() as usize - 1].keys.insert(
                    nid.to_string(),
                    DemoKey { con_id: agreement.con_id.to_string(), key: member_key.expose().into() },
                );
            }
        }
        subscribers.push(DemoSubscriber {
            name: name.into(),
            client_id: creds.client_id,
            client_secret: creds.client_secret.expose().into(),
            api_key: creds.api_key.expose().into(),
            connection: DemoConnection {
                id: id.get(),
                nid: nid.get(),
                key: key.expose().into(),
                environment: connection.environment,
            },
        });
    }
    Ok(DemoCredentials { admin_token: admin_token.expose().into(), subscribers, members: demo_members })
}

/// `trove demo`: refuses a data directory that already holds a catalog (exit 2).
pub async fn run(config: DemoConfig) -> Result<(), Error> {
    let storage = &config.storage;
    std::fs::create_dir_all(&storage.data_dir)?;
    let catalog = Catalog::connect(&storage.catalog_url()).await?;
    if catalog.is_initialized().await? {
        return Err(Error::AlreadySeeded);
    }
    let catalog = crate::open(storage).await?;
    let admin = match &storage.admin_token {
        Some(t) => Secret::from_plaintext(t.clone()),
        None => {
            Secret::from_plaintext(std::fs::read_to_string(storage.data_dir.join("admin-token"))?.trim().to_owned())
        }
    };
    let creds = seed(&catalog, &admin, config.members).await?;
    if config.json {
        println!("{}", serde_json::to_string(&creds).expect("credentials serialize"));
    } else {
        print!("{}", describe(&creds, &storage.data_dir.display().to_string()));
    }
    Ok(())
}

/// The text a person reads: the credentials and curl lines to try.
fn describe(c: &DemoCredentials, dir: &str) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "trove demo fixture seeded in {dir}\n\noperator token: {}\n", c.admin_token);
    for sub in &c.subscribers {
        let _ = writeln!(
            s,
            "subscriber {}: client_id={} client_secret={} api_key={}\n  connection id={} nid={} key={} ({})",
            sub.name,
            sub.client_id,
            sub.client_secret,
            sub.api_key,
            sub.connection.id,
            sub.connection.nid,
            sub.connection.key,
            sub.connection.environment.as_str()
        );
    }
    let _ = writeln!(s);
    for m in &c.members {
        let keys: Vec<String> = m.keys.values().map(|k| format!("{}:{}", k.con_id, k.key)).collect();
        let _ = writeln!(s, "member {} ({}): secret={} keys=[{}]", m.uid, m.mydexid, m.secret, keys.join(", "));
    }
    let energy = &c.subscribers[0];
    let member = &c.members[0];
    let key = &member.keys[&energy.connection.nid.to_string()];
    let base = "http://127.0.0.1:8080";
    let q = format!("con_id={}&key={}&source_type=connection", key.con_id, key.key);
    let _ = write!(
        s,
        "\nTry it:\n  trove serve --data-dir {dir} &\n  curl -s {base}/health\n  \
         TOKEN=$(curl -s -u {id}:{secret} -d grant_type=client_credentials -d scope=mydex:pdx {base}/oauth2/token \
         | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')\n  \
         curl -s -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' \
         -d '{{\"ds_personal_details\": {{\"field_personal_fname\": \"Ada\", \"field_personal_email_address\": \"ada@example.org\"}}}}' \
         \"{base}/api/pds/pds/{uid}.json?{q}\"\n  \
         curl -s -H \"Authorization: Bearer $TOKEN\" \"{base}/api/pds/pds/{uid}.json?{q}&dataset=ds_personal_details\"\n  \
         curl -s -H \"Authorization: Bearer $TOKEN\" \"{base}/api/pds/pds/{uid}.xml?{q}&dataset=ds_personal_details\"\n  \
         curl -s -H \"Authorization: Bearer {nid}:{ckey}\" -H 'Content-Type: application/x-ndjson' \
         --data-binary '{{\"member_uid\": {uid}, \"field_energy_reading_timestamp\": 1764000000, \"field_energy_reading_value\": 1.5}}' \
         {base}/v1/ingest/ds_energy_consumption\n  \
         curl -s -H \"Authorization: Bearer $TOKEN\" \"{base}/api/pds/transaction/{uid}.json?{q}&dataset=ds_energy_consumption\"\n  \
         curl -s -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' \
         -d '{{\"sql\": \"SELECT member_uid, count(*) AS n FROM ds_energy_consumption GROUP BY member_uid\"}}' {base}/v1/query\n  \
         curl -s -H \"Authorization: Bearer {msecret}\" {base}/v1/members/{uid}/access-log\n  \
         curl -s -H \"Authorization: Bearer {msecret}\" {base}/v1/members/{uid}/agreements\n",
        id = energy.client_id,
        secret = energy.client_secret,
        nid = energy.connection.nid,
        ckey = energy.connection.key,
        uid = member.uid,
        msecret = member.secret,
    );
    s
}
