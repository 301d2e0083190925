//! `fhir-bridge topics`: the named topics, each with its jq.

use crate::filter::topics::TOPICS;

/// Every topic: name and type, description, and its jq indented below.
pub fn render() -> String {
    let mut out = String::new();
    for (i, t) in TOPICS.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!(
            "{} ({})\n  {}\n",
            t.name, t.resource_type, t.description
        ));
        for line in t.jq.lines() {
            out.push_str(&format!("    {line}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_topic_is_listed_with_its_jq() {
        let text = super::render();
        for t in super::TOPICS {
            assert!(text.contains(&format!("{} ({})", t.name, t.resource_type)));
            assert!(text.contains(t.description));
        }
        assert!(text.contains("    def done: .status == \"finished\""));
    }
}
