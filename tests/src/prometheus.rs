//! A parser of the Prometheus text exposition, so tests check metrics by their parsed
//! labels rather than by matching text.

use std::collections::BTreeMap;

/// One sample: a metric name, its labels and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name (with `_total` for counters).
    pub name: String,
    /// The labels, unescaped.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// Whether every `(name, value)` of `want` is one of its labels.
    pub fn has(&self, want: &[(&str, &str)]) -> bool {
        want.iter()
            .all(|(k, v)| self.labels.get(*k).is_some_and(|got| got == v))
    }
}

/// Every sample of `text`; panics on a line that is not a comment, a blank or a sample.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| sample(l).unwrap_or_else(|| panic!("not a Prometheus sample: {l:?}")))
        .collect()
}

fn sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        loop {
            let (_, c) = chars.next()?;
            match c {
                '}' => break,
                ',' => continue,
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                c => value.push(c),
                            },
                            c => value.push(c),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c => key.push(c),
            }
        }
        let consumed = chars.next().map_or(body.len(), |(i, _)| i);
        rest = &body[consumed..];
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_escapes_are_read() {
        let got =
            parse("# TYPE a counter\na_total{x=\"1\",y=\"q\\\"\\\\\\n,}\"} 7\nb 2.5 1700000000\n");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].name, "a_total");
        assert_eq!(got[0].labels["x"], "1");
        assert_eq!(got[0].labels["y"], "q\"\\\n,}");
        assert_eq!(got[0].value, 7.0);
        assert_eq!((got[1].name.as_str(), got[1].value), ("b", 2.5));
        assert!(got[0].has(&[("x", "1")]) && !got[0].has(&[("x", "2")]));
    }
}
