//! Named topics: ready-made filters a hook selects with `topic = "..."`.
//! Each is a jq expression like a hook's `filter`; those that describe a
//! transition compare the resource with `$previous` (null on a first
//! sighting), so a re-read of the same version never matches.

use super::Filter;

/// One topic: its name, what it selects, the resource type it is about, and its jq.
#[derive(Debug)]
pub struct Topic {
    pub name: &'static str,
    pub description: &'static str,
    /// The only type the topic can match: `$previous` is kept for it alone.
    pub resource_type: &'static str,
    pub jq: &'static str,
}

/// Every topic, in the order `fhir-bridge topics` lists them.
pub const TOPICS: &[Topic] = &[
    Topic {
        name: "critical-lab-result",
        description: "An Observation newly interpreted as critical (HH, LL or AA)",
        resource_type: "Observation",
        // v3 ObservationInterpretation (R4/R5) and its v2 table 0078 origin;
        // a coding without a system is taken at its word. FHIR has no
        // standard "critical" flag beyond these codes.
        jq: r#"def critical: any(.interpretation[]?.coding[]?;
    (.system == null
      or .system == "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
      or .system == "http://terminology.hl7.org/CodeSystem/v2-0078"
      or .system == "http://hl7.org/fhir/v2/0078")
    and (.code == "HH" or .code == "LL" or .code == "AA"));
.resourceType == "Observation" and critical and ($previous | critical | not)"#,
    },
    Topic {
        name: "adt-discharge",
        description: "An Encounter that became finished (R4) or completed (R5)",
        resource_type: "Encounter",
        jq: r#"def done: .status == "finished" or .status == "completed";
.resourceType == "Encounter" and done and ($previous | done | not)"#,
    },
    Topic {
        name: "new-medication-order",
        description: "A MedicationRequest that became an active order",
        resource_type: "MedicationRequest",
        jq: r#".resourceType == "MedicationRequest" and .status == "active" and .intent == "order"
and $previous.status != "active""#,
    },
    Topic {
        name: "patient-demographic-update",
        description: "A Patient update that changed name, birthDate, gender, address or telecom",
        resource_type: "Patient",
        jq: r#"def demographics: [.name, .birthDate, .gender, .address, .telecom];
.resourceType == "Patient" and $previous != null
and demographics != ($previous | demographics)"#,
    },
    Topic {
        name: "appointment-no-show",
        description: "An Appointment that became noshow",
        resource_type: "Appointment",
        jq: r#".resourceType == "Appointment" and .status == "noshow" and $previous.status != "noshow""#,
    },
];

/// The topic called `name`.
pub fn find(name: &str) -> Option<&'static Topic> {
    TOPICS.iter().find(|t| t.name == name)
}

/// The topic names, comma-separated (for error messages).
pub fn names() -> String {
    TOPICS.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
}

/// Whether a hook with this effective filter and topic reads `$previous` on
/// resources of type `resource_type`. A topic matches its own type only; a
/// plain `filter` may match any type of its sources.
pub fn needs_previous(filter: &Filter, topic: Option<&Topic>, resource_type: &str) -> bool {
    filter.uses_previous() && topic.is_none_or(|t| t.resource_type == resource_type)
}

#[cfg(test)]
#[path = "topics_tests.rs"]
mod tests;
