//! The explicit AST walker behind classification: collects relations read and written
//! (minus CTE names), function calls and flags from statements, queries and expressions.
//! Unmodelled AST variants set `Flags::opaque` (fail closed). Recursion depth is bounded by
//! the caller, which only parses statements under the lexer's operator/depth limits.

use super::{Flags, StatementKind};
use sqlparser::ast::{
    CopySource, Expr, FromTable, Function, FunctionArg, FunctionArgExpr, FunctionArguments,
    GroupByExpr, Ident, InTarget, LimitClause, ObjectName, ObjectNamePart, OnConflictAction,
    OnInsert, OrderByExpr, OrderByKind, Query, Select, SelectItem, SelectItemQualifiedWildcardKind,
    SetExpr, Statement, TableFactor, TableObject, TableWithJoins, UpdateTableFromKind, WindowType,
};

#[derive(Default)]
pub(crate) struct Walker {
    pub reads: Vec<String>,
    pub writes: Vec<String>,
    pub functions: Vec<String>,
    pub volatile: bool,
    pub side_effects: bool,
    pub flags: Flags,
    /// The last statement walked was a variant the walker does not model.
    pub unmodelled: bool,
    ctes: Vec<String>,
    in_cte: usize,
}

fn push_unique(v: &mut Vec<String>, s: String) {
    if !v.contains(&s) {
        v.push(s);
    }
}

impl Walker {
    /// An identifier as PostgreSQL resolves it: unquoted → lower-cased; quoted → kept, and
    /// re-quoted only when it would not read back the same unquoted.
    pub(crate) fn ident_text(id: &Ident) -> String {
        if id.quote_style.is_none() {
            return id.value.to_ascii_lowercase();
        }
        let v = &id.value;
        let plain = v.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && v.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if plain {
            v.clone()
        } else {
            format!("\"{}\"", v.replace('"', "\"\""))
        }
    }

    fn name_parts(&mut self, name: &ObjectName) -> Option<Vec<String>> {
        let mut parts = Vec::with_capacity(name.0.len());
        for p in &name.0 {
            match p {
                ObjectNamePart::Identifier(id) => parts.push(Self::ident_text(id)),
                ObjectNamePart::Function(_) => {
                    self.flags.opaque = true;
                    return None;
                }
            }
        }
        Some(parts)
    }

    /// A relation name as written (schema-qualified if it was), noting catalog/temp use.
    pub(crate) fn table_name(&mut self, name: &ObjectName) -> Option<String> {
        let parts = self.name_parts(name)?;
        let last = parts.last()?;
        let schema = parts.len().checked_sub(2).map(|i| parts[i].as_str());
        match schema {
            Some("pg_catalog" | "information_schema") => self.flags.catalog = true,
            Some(s) if s.starts_with("pg_temp") => self.flags.temp_table = true,
            None if last.starts_with("pg_") => self.flags.catalog = true,
            _ => {}
        }
        Some(parts.join("."))
    }

    fn read(&mut self, name: &ObjectName) {
        if let Some(t) = self.table_name(name) {
            if !self.ctes.contains(&t) {
                push_unique(&mut self.reads, t);
            }
        }
    }

    fn write(&mut self, name: &ObjectName) {
        if let Some(t) = self.table_name(name) {
            push_unique(&mut self.writes, t);
        }
    }

    pub(crate) fn call(&mut self, name: &ObjectName) {
        let Some(parts) = self.name_parts(name) else {
            self.volatile = true;
            return;
        };
        let (schema, fname) = match parts.as_slice() {
            [f] => (None, f.as_str()),
            [.., s, f] => (Some(s.as_str()), f.as_str()),
            [] => return,
        };
        let builtin = matches!(schema, None | Some("pg_catalog"));
        if !(builtin && super::functions::is_immutable(fname)) {
            self.volatile = true;
        }
        if builtin && super::functions::has_side_effects(fname) {
            self.side_effects = true;
        }
        if builtin && fname == "set_config" {
            self.flags.session_state = true;
        }
        push_unique(&mut self.functions, parts.join("."));
    }

    /// Walks one statement; returns its kind and whether that kind is read-only.
    pub(crate) fn statement(&mut self, s: &Statement) -> (StatementKind, bool) {
        use StatementKind as K;
        self.unmodelled = false;
        match s {
            Statement::Query(q) => {
                self.query(q);
                (K::Select, true)
            }
            Statement::Insert(i) => {
                match &i.table {
                    TableObject::TableName(n) => self.write(n),
                    _ => self.flags.opaque = true,
                }
                if let Some(src) = &i.source {
                    self.query(src);
                }
                for a in &i.assignments {
                    self.expr(&a.value);
                }
                if let Some(OnInsert::OnConflict(oc)) = &i.on {
                    if let OnConflictAction::DoUpdate(du) = &oc.action {
                        for a in &du.assignments {
                            self.expr(&a.value);
                        }
                        self.opt_expr(du.selection.as_ref());
                    }
                } else if i.on.is_some() {
                    self.flags.opaque = true;
                }
                self.items(i.returning.as_deref().unwrap_or(&[]));
                (K::Insert, false)
            }
            Statement::Update(u) => {
                match &u.table.relation {
                    TableFactor::Table { name, .. } => self.write(name),
                    other => self.factor(other),
                }
                for j in &u.table.joins {
                    self.factor(&j.relation);
                }
                if let Some(UpdateTableFromKind::BeforeSet(f) | UpdateTableFromKind::AfterSet(f)) =
                    &u.from
                {
                    f.iter().for_each(|t| self.twj(t));
                }
                for a in &u.assignments {
                    self.expr(&a.value);
                }
                self.opt_expr(u.selection.as_ref());
                self.items(u.returning.as_deref().unwrap_or(&[]));
                (K::Update, false)
            }
            Statement::Delete(d) => {
                d.tables.iter().for_each(|t| self.write(t));
                let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &d.from;
                for t in from {
                    match &t.relation {
                        TableFactor::Table { name, .. } => self.write(name),
                        other => self.factor(other),
                    }
                    t.joins.iter().for_each(|j| self.factor(&j.relation));
                }
                d.using.iter().flatten().for_each(|t| self.twj(t));
                self.opt_expr(d.selection.as_ref());
                self.items(d.returning.as_deref().unwrap_or(&[]));
                (K::Delete, false)
            }
            Statement::Merge(m) => {
                match &m.table {
                    TableFactor::Table { name, .. } => self.write(name),
                    _ => self.flags.opaque = true,
                }
                self.factor(&m.source);
                self.expr(&m.on);
                // WHEN clauses are not modelled.
                self.flags.opaque = true;
                (K::Merge, false)
            }
            Statement::Copy { source, to, .. } => {
                match source {
                    CopySource::Table { table_name, .. } if *to => self.read(table_name),
                    CopySource::Table { table_name, .. } => self.write(table_name),
                    CopySource::Query(q) => self.query(q),
                }
                (K::Copy, *to)
            }
            Statement::Truncate(t) => {
                t.table_names.iter().for_each(|n| self.write(&n.name));
                (K::Ddl, false)
            }
            Statement::CreateTable(c) => {
                self.flags.temp_table |= c.temporary;
                self.write(&c.name);
                if let Some(q) = &c.query {
                    self.query(q);
                }
                (K::Ddl, false)
            }
            Statement::CreateView(v) => {
                self.flags.temp_table |= v.temporary;
                self.write(&v.name);
                self.query(&v.query);
                (K::Ddl, false)
            }
            Statement::CreateIndex(ci) => {
                self.write(&ci.table_name);
                (K::Ddl, false)
            }
            Statement::AlterTable(a) => {
                self.write(&a.name);
                (K::Ddl, false)
            }
            Statement::Drop { names, .. } => {
                names.iter().for_each(|n| self.write(n));
                (K::Ddl, false)
            }
            Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Savepoint { .. }
            | Statement::ReleaseSavepoint { .. } => (K::Transaction, false),
            Statement::Set(_) | Statement::Reset(_) | Statement::Discard { .. } => {
                self.flags.session_state = true;
                (K::Session, false)
            }
            Statement::ShowVariable { .. } | Statement::ShowVariables { .. } => {
                self.volatile = true;
                (K::Session, true)
            }
            Statement::Explain { .. } => {
                // EXPLAIN output depends on statistics; EXPLAIN ANALYZE executes. Not modelled.
                self.flags.opaque = true;
                (K::Utility, false)
            }
            Statement::Declare { .. } | Statement::Fetch { .. } | Statement::Close { .. } => {
                self.flags.cursor = true;
                self.flags.opaque = true;
                (K::Utility, false)
            }
            Statement::Call(f) => {
                self.function(f);
                self.side_effects = true;
                (K::Utility, false)
            }
            _ => {
                self.flags.opaque = true;
                self.unmodelled = true;
                (K::Utility, false)
            }
        }
    }

    pub(crate) fn query(&mut self, q: &Query) {
        let scope = self.ctes.len();
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                // A recursive CTE may reference itself; register the name first.
                self.ctes.push(Self::ident_text(&cte.alias.name));
                self.in_cte += 1;
                self.query(&cte.query);
                self.in_cte -= 1;
            }
        }
        self.set_expr(&q.body);
        if let Some(ob) = &q.order_by {
            if let OrderByKind::Expressions(e) = &ob.kind {
                self.order_by(e);
            }
        }
        match &q.limit_clause {
            Some(LimitClause::LimitOffset {
                limit,
                offset,
                limit_by,
            }) => {
                self.opt_expr(limit.as_ref());
                self.opt_expr(offset.as_ref().map(|o| &o.value));
                self.exprs(limit_by);
            }
            Some(LimitClause::OffsetCommaLimit { offset, limit }) => {
                self.expr(offset);
                self.expr(limit);
            }
            None => {}
        }
        if let Some(f) = &q.fetch {
            self.opt_expr(f.quantity.as_ref());
        }
        self.flags.for_update_share |= !q.locks.is_empty();
        if q.for_clause.is_some() || !q.pipe_operators.is_empty() || q.settings.is_some() {
            self.flags.opaque = true;
        }
        self.ctes.truncate(scope);
    }

    fn set_expr(&mut self, s: &SetExpr) {
        match s {
            SetExpr::Select(sel) => self.select(sel),
            SetExpr::Query(q) => self.query(q),
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left);
                self.set_expr(right);
            }
            SetExpr::Values(v) => v.rows.iter().for_each(|r| self.exprs(&r.content)),
            SetExpr::Insert(st)
            | SetExpr::Update(st)
            | SetExpr::Delete(st)
            | SetExpr::Merge(st) => {
                self.flags.writable_cte |= self.in_cte > 0;
                self.statement(st);
            }
            SetExpr::Table(t) => match &t.table_name {
                Some(name) => {
                    let mut parts: Vec<Ident> = t.schema_name.iter().cloned().collect();
                    parts.push(name.clone());
                    self.read(&ObjectName::from(parts));
                }
                None => self.flags.opaque = true,
            },
        }
    }

    fn select(&mut self, s: &Select) {
        self.items(&s.projection);
        if let Some(into) = &s.into {
            self.flags.select_into = true;
            self.flags.temp_table |= into.temporary;
        }
        s.from.iter().for_each(|t| self.twj(t));
        self.opt_expr(s.selection.as_ref());
        if let GroupByExpr::Expressions(e, _) = &s.group_by {
            self.exprs(e);
        } else {
            self.flags.opaque = true;
        }
        self.opt_expr(s.having.as_ref());
        if s.prewhere.is_some()
            || !s.lateral_views.is_empty()
            || !s.connect_by.is_empty()
            || !s.named_window.is_empty()
            || s.qualify.is_some()
        {
            self.flags.opaque = true;
        }
    }

    fn twj(&mut self, t: &TableWithJoins) {
        self.factor(&t.relation);
        for j in &t.joins {
            self.factor(&j.relation);
            use sqlparser::ast::{JoinConstraint as C, JoinOperator as J};
            let c = match &j.join_operator {
                J::Join(c)
                | J::Inner(c)
                | J::Left(c)
                | J::LeftOuter(c)
                | J::Right(c)
                | J::RightOuter(c)
                | J::FullOuter(c)
                | J::CrossJoin(c) => c,
                _ => {
                    self.flags.opaque = true;
                    continue;
                }
            };
            if let C::On(e) = c {
                self.expr(e);
            }
        }
    }

    fn factor(&mut self, f: &TableFactor) {
        match f {
            TableFactor::Table {
                name, args, sample, ..
            } => {
                if let Some(a) = args {
                    self.call(name);
                    a.args.iter().for_each(|a| self.fn_arg(a));
                } else {
                    self.read(name);
                }
                if sample.is_some() {
                    self.flags.tablesample = true;
                    self.volatile = true;
                }
            }
            TableFactor::Derived { subquery, .. } => self.query(subquery),
            TableFactor::TableFunction { expr, .. } => self.expr(expr),
            TableFactor::Function { name, args, .. } => {
                self.call(name);
                args.iter().for_each(|a| self.fn_arg(a));
            }
            TableFactor::UNNEST { array_exprs, .. } => self.exprs(array_exprs),
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => self.twj(table_with_joins),
            _ => self.flags.opaque = true,
        }
    }

    pub(crate) fn items(&mut self, items: &[SelectItem]) {
        for it in items {
            match it {
                SelectItem::UnnamedExpr(e)
                | SelectItem::ExprWithAlias { expr: e, .. }
                | SelectItem::ExprWithAliases { expr: e, .. } => self.expr(e),
                SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::Expr(e), _) => {
                    self.expr(e)
                }
                SelectItem::QualifiedWildcard(..) | SelectItem::Wildcard(_) => {}
            }
        }
    }

    pub(crate) fn order_by(&mut self, o: &[OrderByExpr]) {
        o.iter().for_each(|e| self.expr(&e.expr));
    }

    pub(crate) fn exprs(&mut self, es: &[Expr]) {
        es.iter().for_each(|e| self.expr(e));
    }

    pub(crate) fn opt_expr(&mut self, e: Option<&Expr>) {
        if let Some(e) = e {
            self.expr(e);
        }
    }

    pub(crate) fn function(&mut self, f: &Function) {
        self.call(&f.name);
        self.fn_args(&f.parameters);
        self.fn_args(&f.args);
        self.order_by(&f.within_group);
        self.opt_expr(f.filter.as_deref());
        if let Some(WindowType::WindowSpec(spec)) = &f.over {
            self.exprs(&spec.partition_by);
            self.order_by(&spec.order_by);
        }
    }

    pub(crate) fn fn_args(&mut self, a: &FunctionArguments) {
        match a {
            FunctionArguments::None => {}
            FunctionArguments::Subquery(q) => self.query(q),
            FunctionArguments::List(l) => {
                l.args.iter().for_each(|a| self.fn_arg(a));
                if !l.clauses.is_empty() {
                    self.flags.opaque = true;
                }
            }
        }
    }

    pub(crate) fn fn_arg(&mut self, a: &FunctionArg) {
        let (FunctionArg::Named { arg, .. }
        | FunctionArg::ExprNamed { arg, .. }
        | FunctionArg::Unnamed(arg)) = a;
        if let FunctionArgExpr::Expr(e) = arg {
            self.expr(e);
        }
    }
}

/// Casts and typed literals whose value depends on the clock, TimeZone or search_path
/// (`'now'::timestamptz`, `'today'::date`, `'t'::regclass`).
pub(crate) fn context_dependent_type(dt: &sqlparser::ast::DataType) -> bool {
    let s = dt.to_string().to_ascii_lowercase();
    s.contains("time") || s.contains("date") || s.starts_with("reg")
}

impl Walker {
    pub(crate) fn in_target(&mut self, t: &InTarget) {
        match t {
            InTarget::List(l) => self.exprs(l),
            InTarget::Subquery(q) => self.query(q),
            InTarget::Unnest(e) => self.expr(e),
            InTarget::Table { .. } => self.flags.opaque = true,
        }
    }
}
