//! The per-instance configuration: `{n}`, `{n+K}` and `{dir}` replaced in the template text.
//! Other braces (TOML inline tables) are left as they are.

use std::path::Path;

/// The template with instance `n`'s values; `dir` is the instance's own directory.
pub fn instantiate(template: &str, n: usize, dir: &Path) -> Result<String, String> {
    let dir = dir.to_str().ok_or("the fleet directory is not UTF-8")?;
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let end = tail.find('}').map(|e| e + 1);
        let token = end.map(|e| &tail[1..e - 1]);
        match token {
            Some("n") => out.push_str(&n.to_string()),
            Some("dir") => out.push_str(dir),
            Some(t) if t.starts_with("n+") => {
                let k: usize = t[2..]
                    .trim()
                    .parse()
                    .map_err(|_| format!("template: {{{t}}} needs a number after n+"))?;
                let v = n
                    .checked_add(k)
                    .ok_or_else(|| format!("template: {{{t}}} overflows"))?;
                out.push_str(&v.to_string());
            }
            _ => {
                out.push('{');
                rest = &tail[1..];
                continue;
            }
        }
        rest = &tail[end.unwrap_or(tail.len())..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_and_other_braces_kept() {
        let t = "sn = \"SIM{n}\"\nport = \"127.0.0.1:{n+20000}\"\nd = \"{dir}/state\"\nx = { a = 1 }\ny = \"{n}{n}\"";
        let s = instantiate(t, 7, Path::new("/f/7")).unwrap();
        assert_eq!(
            s,
            "sn = \"SIM7\"\nport = \"127.0.0.1:20007\"\nd = \"/f/7/state\"\nx = { a = 1 }\ny = \"77\""
        );
        assert!(instantiate("{n+x}", 1, Path::new("/")).is_err());
        assert_eq!(instantiate("a{b", 1, Path::new("/")).unwrap(), "a{b");
        assert_eq!(instantiate("{", 1, Path::new("/")).unwrap(), "{");
    }
}
