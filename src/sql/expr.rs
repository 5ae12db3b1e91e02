//! Expression half of the AST walker: every `Expr` variant PostgreSQL can produce is walked
//! for subqueries (tables read) and function calls (volatility); clock/TimeZone-dependent
//! constructs (`AT TIME ZONE`, `EXTRACT`, casts to date/time/reg* types, SQL value functions)
//! mark the statement volatile; unmodelled variants set `Flags::opaque`.

use super::functions::is_session_value;
use super::walk::{context_dependent_type, Walker};
use sqlparser::ast::{AccessExpr, Expr, Subscript};

impl Walker {
    pub(crate) fn expr(&mut self, e: &Expr) {
        match e {
            Expr::Identifier(id) => {
                if id.quote_style.is_none() && is_session_value(&id.value.to_ascii_lowercase()) {
                    self.volatile = true;
                }
            }
            Expr::Value(_) | Expr::CompoundIdentifier(_) | Expr::Wildcard(_) => {}
            Expr::QualifiedWildcard(..) => {}
            Expr::CompoundFieldAccess { root, access_chain } => {
                self.expr(root);
                for a in access_chain {
                    match a {
                        AccessExpr::Dot(e) => self.expr(e),
                        AccessExpr::Subscript(Subscript::Index { index }) => self.expr(index),
                        AccessExpr::Subscript(Subscript::Slice {
                            lower_bound,
                            upper_bound,
                            stride,
                        }) => {
                            self.opt_expr(lower_bound.as_ref());
                            self.opt_expr(upper_bound.as_ref());
                            self.opt_expr(stride.as_ref());
                        }
                    }
                }
            }
            Expr::JsonAccess { value, .. } => self.expr(value),
            Expr::IsFalse(e)
            | Expr::IsNotFalse(e)
            | Expr::IsTrue(e)
            | Expr::IsNotTrue(e)
            | Expr::IsNull(e)
            | Expr::IsNotNull(e)
            | Expr::IsUnknown(e)
            | Expr::IsNotUnknown(e)
            | Expr::Nested(e)
            | Expr::UnaryOp { expr: e, .. }
            | Expr::Ceil { expr: e, .. }
            | Expr::Floor { expr: e, .. }
            | Expr::Collate { expr: e, .. }
            | Expr::Prefixed { value: e, .. }
            | Expr::IsNormalized { expr: e, .. }
            | Expr::Named { expr: e, .. } => self.expr(e),
            Expr::IsDistinctFrom(a, b)
            | Expr::IsNotDistinctFrom(a, b)
            | Expr::BinaryOp {
                left: a, right: b, ..
            }
            | Expr::AnyOp {
                left: a, right: b, ..
            }
            | Expr::AllOp {
                left: a, right: b, ..
            }
            | Expr::Position { expr: a, r#in: b } => {
                self.expr(a);
                self.expr(b);
            }
            Expr::In { expr, target, .. } => {
                self.expr(expr);
                self.in_target(target);
            }
            Expr::Between {
                expr, low, high, ..
            } => {
                self.expr(expr);
                self.expr(low);
                self.expr(high);
            }
            Expr::Like {
                expr,
                pattern,
                escape_char,
                ..
            }
            | Expr::ILike {
                expr,
                pattern,
                escape_char,
                ..
            }
            | Expr::SimilarTo {
                expr,
                pattern,
                escape_char,
                ..
            } => {
                self.expr(expr);
                self.expr(pattern);
                self.opt_expr(escape_char.as_deref());
            }
            Expr::Cast {
                expr, data_type, ..
            } => {
                if context_dependent_type(data_type) {
                    self.volatile = true;
                }
                self.expr(expr);
            }
            Expr::TypedString(ts) => {
                if context_dependent_type(&ts.data_type) {
                    self.volatile = true;
                }
            }
            Expr::AtTimeZone {
                timestamp,
                time_zone,
            } => {
                self.volatile = true;
                self.expr(timestamp);
                self.expr(time_zone);
            }
            Expr::Extract { expr, .. } => {
                // date_part on timestamptz is STABLE (TimeZone); the argument type is unknown.
                self.volatile = true;
                self.expr(expr);
            }
            Expr::Substring {
                expr,
                substring_from,
                substring_for,
                ..
            } => {
                self.expr(expr);
                self.opt_expr(substring_from.as_deref());
                self.opt_expr(substring_for.as_deref());
            }
            Expr::Trim {
                expr,
                trim_what,
                trim_characters,
                ..
            } => {
                self.expr(expr);
                self.opt_expr(trim_what.as_deref());
                self.exprs(trim_characters.as_deref().unwrap_or(&[]));
            }
            Expr::Overlay {
                expr,
                overlay_what,
                overlay_from,
                overlay_for,
            } => {
                self.expr(expr);
                self.expr(overlay_what);
                self.expr(overlay_from);
                self.opt_expr(overlay_for.as_deref());
            }
            Expr::Function(f) => self.function(f),
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                self.opt_expr(operand.as_deref());
                for c in conditions {
                    self.expr(&c.condition);
                    self.expr(&c.result);
                }
                self.opt_expr(else_result.as_deref());
            }
            Expr::Exists { subquery, .. } | Expr::Subquery(subquery) => self.query(subquery),
            Expr::GroupingSets(sets) | Expr::Cube(sets) | Expr::Rollup(sets) => {
                sets.iter().for_each(|s| self.exprs(s));
            }
            Expr::Tuple(es) => self.exprs(es),
            Expr::Array(a) => self.exprs(&a.elem),
            Expr::Interval(i) => self.expr(&i.value),
            _ => self.flags.opaque = true,
        }
    }
}
