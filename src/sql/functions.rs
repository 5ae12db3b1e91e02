//! Function knowledge for classification: a conservative allowlist of functions whose every
//! PostgreSQL overload is IMMUTABLE (plus deterministic aggregates and window functions), and
//! a list of functions with side effects. Anything not on the allowlist makes a statement
//! volatile; a side-effecting function also makes it not read-only. Names are compared
//! lower-cased, unqualified or qualified with `pg_catalog`.

/// Functions that are IMMUTABLE in every overload (checked against `pg_proc.provolatile`),
/// and aggregate/window functions, which are deterministic over their input rows.
/// Deliberately absent although often assumed immutable: `concat`, `concat_ws`, `format`,
/// `to_char`, `array_to_string`, `json_build_object`, `to_json(b)`, `date_trunc`, `age`,
/// `generate_series` (each has a STABLE overload that depends on DateStyle/TimeZone/…).
#[rustfmt::skip]
const IMMUTABLE: &[&str] = &[
    // strings
    "ascii", "bit_length", "btrim", "char_length", "character_length", "chr", "decode",
    "encode", "initcap", "left", "length", "lower", "lpad", "ltrim", "md5", "octet_length",
    "overlay", "position", "quote_ident", "quote_literal", "quote_nullable", "regexp_count",
    "regexp_instr", "regexp_like", "regexp_match", "regexp_matches", "regexp_replace",
    "regexp_split_to_array", "regexp_substr", "repeat", "replace", "reverse", "right", "rpad",
    "rtrim", "sha224", "sha256", "sha384", "sha512", "split_part", "starts_with",
    "string_to_array", "strpos", "substr", "substring", "to_hex", "translate", "trim", "upper",
    // math
    "abs", "acos", "asin", "atan", "atan2", "cbrt", "ceil", "ceiling", "cos", "cot", "degrees",
    "div", "exp", "factorial", "floor", "gcd", "lcm", "ln", "log", "log10", "mod", "pi",
    "power", "radians", "round", "scale", "sign", "sin", "sqrt", "tan", "trunc", "width_bucket",
    // conditional expressions and null tests
    "coalesce", "greatest", "least", "nullif", "num_nonnulls", "num_nulls",
    // arrays
    "array_append", "array_cat", "array_dims", "array_length", "array_lower", "array_ndims",
    "array_position", "array_positions", "array_prepend", "array_remove", "array_replace",
    "array_upper", "cardinality", "unnest",
    // json / jsonb accessors
    "json_array_length", "json_extract_path", "json_extract_path_text", "json_typeof",
    "jsonb_array_length", "jsonb_extract_path", "jsonb_extract_path_text", "jsonb_insert",
    "jsonb_pretty", "jsonb_set", "jsonb_strip_nulls", "jsonb_typeof",
    // aggregates and window functions
    "array_agg", "avg", "bit_and", "bit_or", "bool_and", "bool_or", "count", "cume_dist",
    "dense_rank", "every", "first_value", "jsonb_agg", "lag", "last_value", "lead", "max",
    "min", "nth_value", "ntile", "percent_rank", "rank", "row_number", "string_agg", "sum",
];

/// Functions that write, take locks or change session state.
#[rustfmt::skip]
const SIDE_EFFECTS: &[&str] = &[
    "nextval", "setval", "lastval", "currval", "set_config", "pg_notify", "txid_current",
    "pg_current_xact_id", "pg_cancel_backend", "pg_terminate_backend", "pg_reload_conf",
    "pg_rotate_logfile", "pg_switch_wal", "pg_create_restore_point", "pg_stat_reset",
    "dblink_exec", "dblink", "pg_sleep",
];

/// Prefixes of side-effecting function families (advisory locks, large objects).
const SIDE_EFFECT_PREFIXES: &[&str] = &["pg_advisory", "pg_try_advisory", "lo_", "pg_sleep"];

/// SQL value functions that read session state and may parse as bare identifiers.
#[rustfmt::skip]
const SESSION_VALUES: &[&str] = &[
    "current_user", "session_user", "user", "current_role", "current_schema", "current_catalog",
    "current_date", "current_time", "current_timestamp", "localtime", "localtimestamp",
];

/// Is `name` (lower-cased, unqualified) on the IMMUTABLE allowlist?
pub(crate) fn is_immutable(name: &str) -> bool {
    IMMUTABLE.contains(&name)
}

/// Does `name` (lower-cased, unqualified) have side effects?
pub(crate) fn has_side_effects(name: &str) -> bool {
    SIDE_EFFECTS.contains(&name) || SIDE_EFFECT_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Is `name` one of the SQL value functions (`current_user`, `current_timestamp`, …)?
pub(crate) fn is_session_value(name: &str) -> bool {
    SESSION_VALUES.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        assert!(is_immutable("lower") && is_immutable("coalesce") && is_immutable("count"));
        for f in [
            "now",
            "random",
            "nextval",
            "concat",
            "to_char",
            "set_config",
            "my_func",
        ] {
            assert!(!is_immutable(f), "{f}");
        }
        assert!(has_side_effects("pg_advisory_xact_lock") && has_side_effects("lo_import"));
        assert!(has_side_effects("nextval") && !has_side_effects("lower"));
        assert!(is_session_value("current_user") && !is_session_value("lower"));
    }
}
