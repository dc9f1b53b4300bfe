//! One connection type for both stores: the embedded SQLite database and a shared
//! PostgreSQL server. The store's queries are written once, in the SQL both speak
//! (`?N` parameters, `ON CONFLICT`, `RETURNING`); on PostgreSQL each statement is
//! rewritten once (`?N` to `$N`, SQLite's index hints dropped) and prepared once per
//! connection.
//!
//! The surface follows rusqlite's (`execute`, `query_row`, `prepare_cached`,
//! `transaction`), so a query reads the same whichever server runs it.

use std::cell::RefCell;
use std::collections::HashMap;

use super::StoreError;

/// A value bound to a parameter or read from a column.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Self::Int(n)
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Self::Text(s)
    }
}

/// Anything bound as a parameter.
pub trait Param {
    fn value(&self) -> Value;
}

impl Param for Value {
    fn value(&self) -> Value {
        self.clone()
    }
}

macro_rules! int_param {
    ($($t:ty),*) => {$(
        impl Param for $t {
            fn value(&self) -> Value {
                Value::Int(*self as i64)
            }
        }
    )*};
}
int_param!(i64, i32, u32, u16, usize);

impl Param for bool {
    fn value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}

impl Param for str {
    fn value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}

impl Param for String {
    fn value(&self) -> Value {
        Value::Text(self.clone())
    }
}

impl<T: Param + ?Sized> Param for &T {
    fn value(&self) -> Value {
        (**self).value()
    }
}

impl<T: Param> Param for Option<T> {
    fn value(&self) -> Value {
        self.as_ref().map_or(Value::Null, Param::value)
    }
}

/// `params![a, b, c]`: the parameters of one statement, in `?1, ?2, ...` order.
#[macro_export]
#[doc(hidden)]
macro_rules! store_params {
    () => { &[] as &[&dyn $crate::store::db::Param] };
    ($($p:expr),+ $(,)?) => { &[$(&$p as &dyn $crate::store::db::Param),+] as &[&dyn $crate::store::db::Param] };
}
pub use crate::store_params as params;

/// Parameters from a list of values (a query built at run time).
pub fn params_from_iter(values: &[Value]) -> Vec<&dyn Param> {
    values.iter().map(|v| v as &dyn Param).collect()
}

/// A column read into a Rust type.
pub trait FromValue: Sized {
    fn from_value(value: Value) -> Result<Self, String>;
}

impl FromValue for Value {
    fn from_value(value: Value) -> Result<Self, String> {
        Ok(value)
    }
}

impl FromValue for i64 {
    fn from_value(value: Value) -> Result<Self, String> {
        match value {
            Value::Int(n) => Ok(n),
            other => Err(format!("expected an integer, found {other:?}")),
        }
    }
}

macro_rules! narrow_int {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(value: Value) -> Result<Self, String> {
                let n = i64::from_value(value)?;
                <$t>::try_from(n).map_err(|_| format!("{n} is out of range for {}", stringify!($t)))
            }
        }
    )*};
}
narrow_int!(i32, u32, u16, usize);

impl FromValue for bool {
    fn from_value(value: Value) -> Result<Self, String> {
        Ok(i64::from_value(value)? != 0)
    }
}

impl FromValue for String {
    fn from_value(value: Value) -> Result<Self, String> {
        match value {
            Value::Text(s) => Ok(s),
            other => Err(format!("expected text, found {other:?}")),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: Value) -> Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// Which server a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// Appended to a lookup of a row that must not change before the transaction
    /// commits. SQLite needs none: its writers are serialised.
    pub fn for_share(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Postgres => " FOR SHARE",
        }
    }

    /// Appended to a lookup of rows to take: rows another engine is taking are
    /// passed over instead of waited for.
    pub fn skip_locked(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }
}

/// One database connection.
pub struct Connection {
    inner: Inner,
}

enum Inner {
    Sqlite(rusqlite::Connection),
    Postgres(Box<RefCell<Postgres>>),
}

struct Postgres {
    client: OffRuntime,
    statements: HashMap<String, postgres::Statement>,
}

/// The sync PostgreSQL client, which must not be dropped on an async thread (its
/// drop blocks on closing the connection, and panics there): wherever the last
/// handle to the store goes, the client is closed on a thread of its own.
struct OffRuntime(Option<postgres::Client>);

impl std::ops::Deref for OffRuntime {
    type Target = postgres::Client;

    fn deref(&self) -> &postgres::Client {
        self.0
            .as_ref()
            .expect("the client is taken only when dropped")
    }
}

impl std::ops::DerefMut for OffRuntime {
    fn deref_mut(&mut self) -> &mut postgres::Client {
        self.0
            .as_mut()
            .expect("the client is taken only when dropped")
    }
}

impl Drop for OffRuntime {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                let _ = std::thread::Builder::new()
                    .name("postgres-close".into())
                    .spawn(move || drop(client));
            }
        }
    }
}

impl Connection {
    pub fn sqlite(conn: rusqlite::Connection) -> Self {
        Self {
            inner: Inner::Sqlite(conn),
        }
    }

    pub fn postgres(client: postgres::Client) -> Self {
        Self {
            inner: Inner::Postgres(Box::new(RefCell::new(Postgres {
                client: OffRuntime(Some(client)),
                statements: HashMap::new(),
            }))),
        }
    }

    pub fn dialect(&self) -> Dialect {
        match self.inner {
            Inner::Sqlite(_) => Dialect::Sqlite,
            Inner::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The SQLite connection underneath, for what only SQLite has (pragmas).
    pub fn as_sqlite(&self) -> Option<&rusqlite::Connection> {
        match &self.inner {
            Inner::Sqlite(conn) => Some(conn),
            Inner::Postgres(_) => None,
        }
    }

    /// False once the server closed the connection: the pool opens a new one.
    pub fn is_usable(&self) -> bool {
        match &self.inner {
            Inner::Sqlite(_) => true,
            Inner::Postgres(pg) => pg.try_borrow().map_or(true, |pg| !pg.client.is_closed()),
        }
    }

    /// Asks the server whether the connection still works (one round trip): a
    /// connection the server closed is known as closed only once it is used.
    pub fn answers(&self) -> bool {
        match &self.inner {
            Inner::Sqlite(_) => true,
            Inner::Postgres(pg) => pg.try_borrow_mut().is_ok_and(|mut pg| {
                pg.client
                    .is_valid(std::time::Duration::from_secs(5))
                    .is_ok()
            }),
        }
    }

    /// Runs statements without parameters (migrations).
    pub fn execute_batch(&self, sql: &str) -> Result<(), StoreError> {
        match &self.inner {
            Inner::Sqlite(conn) => Ok(conn.execute_batch(sql)?),
            Inner::Postgres(pg) => Ok(pg.borrow_mut().client.batch_execute(sql)?),
        }
    }

    /// Runs one statement; the rows it changed.
    pub fn execute(&self, sql: &str, params: &[&dyn Param]) -> Result<usize, StoreError> {
        match &self.inner {
            Inner::Sqlite(conn) => {
                let mut stmt = conn.prepare_cached(sql)?;
                Ok(stmt.execute(rusqlite::params_from_iter(sqlite_values(params)))?)
            }
            Inner::Postgres(pg) => {
                let mut pg = pg.borrow_mut();
                let stmt = pg.prepare(sql)?;
                let values = pg_values(params);
                let changed = pg.client.execute(&stmt, &pg_refs(&values))?;
                Ok(changed as usize)
            }
        }
    }

    /// Every row of a query, each read by `f`.
    pub fn query<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        mut f: impl FnMut(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        match &self.inner {
            Inner::Sqlite(conn) => {
                let mut stmt = conn.prepare_cached(sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(sqlite_values(params)))?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    out.push(f(&Row(RowInner::Sqlite(row)))?);
                }
                Ok(out)
            }
            Inner::Postgres(pg) => {
                let rows = {
                    let mut pg = pg.borrow_mut();
                    let stmt = pg.prepare(sql)?;
                    let values = pg_values(params);
                    pg.client.query(&stmt, &pg_refs(&values))?
                };
                rows.iter()
                    .map(|row| f(&Row(RowInner::Postgres(row))))
                    .collect()
            }
        }
    }

    /// The first row of a query; `StoreError::NoRow` when there is none (see
    /// [`OptionalExtension::optional`]).
    pub fn query_row<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        f: impl FnOnce(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut f = Some(f);
        let mut first = None;
        self.query_until_first(sql, params, &mut |row| {
            if let Some(f) = f.take() {
                first = Some(f(row)?);
            }
            Ok(())
        })?;
        first.ok_or(StoreError::NoRow)
    }

    fn query_until_first(
        &self,
        sql: &str,
        params: &[&dyn Param],
        f: &mut dyn FnMut(&Row<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        match &self.inner {
            Inner::Sqlite(conn) => {
                let mut stmt = conn.prepare_cached(sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(sqlite_values(params)))?;
                if let Some(row) = rows.next()? {
                    f(&Row(RowInner::Sqlite(row)))?;
                }
                Ok(())
            }
            Inner::Postgres(pg) => {
                // The first row only, as SQLite's step does: a query that finds
                // several is not an error here (postgres' `query_opt` would say so).
                let row = {
                    use postgres::fallible_iterator::FallibleIterator;
                    let mut pg = pg.borrow_mut();
                    let stmt = pg.prepare(sql)?;
                    let values = pg_values(params);
                    let mut rows = pg.client.query_raw(&stmt, pg_refs(&values))?;
                    let first = rows.next()?;
                    // The rest is read off the wire so the connection is ready again
                    // (once the iterator has ended it must not be asked again).
                    if first.is_some() {
                        while rows.next()?.is_some() {}
                    }
                    first
                };
                match row {
                    Some(row) => f(&Row(RowInner::Postgres(&row))),
                    None => Ok(()),
                }
            }
        }
    }

    /// Whether a query finds a row.
    pub fn exists(&self, sql: &str, params: &[&dyn Param]) -> Result<bool, StoreError> {
        let mut found = false;
        self.query_until_first(sql, params, &mut |_| {
            found = true;
            Ok(())
        })?;
        Ok(found)
    }

    pub fn prepare<'c>(&'c self, sql: &str) -> Result<Statement<'c>, StoreError> {
        self.prepare_cached(sql)
    }

    /// A statement kept prepared on this connection, run with different parameters.
    pub fn prepare_cached<'c>(&'c self, sql: &str) -> Result<Statement<'c>, StoreError> {
        Ok(Statement {
            conn: self,
            sql: sql.to_owned(),
        })
    }

    /// The id of the row the last INSERT on this connection made.
    pub fn last_insert_rowid(&self) -> Result<i64, StoreError> {
        match &self.inner {
            Inner::Sqlite(conn) => Ok(conn.last_insert_rowid()),
            Inner::Postgres(_) => self.query_row("SELECT lastval()", params![], |r| r.get(0)),
        }
    }

    /// Starts a transaction: committed by [`Transaction::commit`], rolled back when
    /// dropped without it (an error returned half-way writes nothing).
    pub fn transaction(&self) -> Result<Transaction<'_>, StoreError> {
        self.execute_batch("BEGIN")?;
        Ok(Transaction {
            conn: self,
            open: true,
        })
    }

    /// A transaction that writes from its first statement: on SQLite it takes the
    /// write lock at once, so a later write in it never fails as busy.
    pub fn transaction_immediate(&self) -> Result<Transaction<'_>, StoreError> {
        self.execute_batch(match self.dialect() {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        })?;
        Ok(Transaction {
            conn: self,
            open: true,
        })
    }
}

/// See [`Connection::prepare_cached`].
pub struct Statement<'c> {
    conn: &'c Connection,
    sql: String,
}

impl Statement<'_> {
    pub fn execute(&mut self, params: &[&dyn Param]) -> Result<usize, StoreError> {
        self.conn.execute(&self.sql, params)
    }

    pub fn exists(&mut self, params: &[&dyn Param]) -> Result<bool, StoreError> {
        self.conn.exists(&self.sql, params)
    }

    pub fn query_row<T>(
        &mut self,
        params: &[&dyn Param],
        f: impl FnOnce(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.conn.query_row(&self.sql, params, f)
    }

    /// Every row, each read by `f`; collected as rusqlite's `query_map` is.
    pub fn query_map<T>(
        &mut self,
        params: &[&dyn Param],
        f: impl FnMut(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<std::vec::IntoIter<Result<T, StoreError>>, StoreError> {
        let rows = self.conn.query(&self.sql, params, f)?;
        Ok(rows.into_iter().map(Ok).collect::<Vec<_>>().into_iter())
    }
}

/// See [`Connection::transaction`].
pub struct Transaction<'c> {
    conn: &'c Connection,
    open: bool,
}

impl Transaction<'_> {
    pub fn commit(mut self) -> Result<(), StoreError> {
        self.open = false;
        self.conn.execute_batch("COMMIT")
    }
}

impl std::ops::Deref for Transaction<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if self.open {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::warn!(error = %e, "a transaction could not be rolled back");
            }
        }
    }
}

/// One row of a result.
pub struct Row<'r>(RowInner<'r>);

enum RowInner<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    Postgres(&'r postgres::Row),
}

/// A column index (only `usize`, so a literal `0` needs no annotation).
pub trait RowIndex {
    fn index(self) -> usize;
}

impl RowIndex for usize {
    fn index(self) -> usize {
        self
    }
}

impl Row<'_> {
    pub fn get<I: RowIndex, T: FromValue>(&self, index: I) -> Result<T, StoreError> {
        let index = index.index();
        let value = match &self.0 {
            RowInner::Sqlite(row) => {
                use rusqlite::types::ValueRef;
                match row.get_ref(index)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(n) => Value::Int(n),
                    ValueRef::Real(x) => Value::Int(x as i64),
                    ValueRef::Text(t) | ValueRef::Blob(t) => {
                        Value::Text(String::from_utf8_lossy(t).into_owned())
                    }
                }
            }
            RowInner::Postgres(row) => pg_column(row, index)?,
        };
        T::from_value(value).map_err(|message| StoreError::Column { index, message })
    }
}

/// `query_row(...).optional()`: no row is `None`, as with rusqlite.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>, StoreError>;
}

impl<T> OptionalExtension<T> for Result<T, StoreError> {
    fn optional(self) -> Result<Option<T>, StoreError> {
        match self {
            Ok(value) => Ok(Some(value)),
            Err(StoreError::NoRow) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn sqlite_values(params: &[&dyn Param]) -> Vec<rusqlite::types::Value> {
    params
        .iter()
        .map(|p| match p.value() {
            Value::Null => rusqlite::types::Value::Null,
            Value::Int(n) => rusqlite::types::Value::Integer(n),
            Value::Text(s) => rusqlite::types::Value::Text(s),
        })
        .collect()
}

impl Postgres {
    fn prepare(&mut self, sql: &str) -> Result<postgres::Statement, StoreError> {
        if let Some(stmt) = self.statements.get(sql) {
            return Ok(stmt.clone());
        }
        let stmt = self.client.prepare(&to_postgres(sql))?;
        self.statements.insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }
}

/// SQLite's spelling to PostgreSQL's: `?N` parameters become `$N`, and index hints
/// (`INDEXED BY name`) go (PostgreSQL's planner picks indexes itself). Quoted text
/// is left alone.
pub fn to_postgres(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
            out.push(c);
        } else if c == '?' && !quoted && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    drop_index_hints(&out)
}

fn drop_index_hints(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find("INDEXED BY ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "INDEXED BY ".len()..];
        let name_end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        rest = &after[name_end..];
    }
    out.push_str(rest);
    out
}

/// A parameter as PostgreSQL wants it: the server says which type each parameter
/// has (from the column it meets), and the value is written as that type.
#[derive(Debug)]
struct PgValue(Value);

impl postgres::types::ToSql for PgValue {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::Type;
        match &self.0 {
            Value::Null => Ok(postgres::types::IsNull::Yes),
            Value::Int(n) => match *ty {
                Type::INT8 => n.to_sql(ty, out),
                Type::INT4 => i32::try_from(*n)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*n)?.to_sql(ty, out),
                Type::BOOL => (*n != 0).to_sql(ty, out),
                Type::FLOAT8 => (*n as f64).to_sql(ty, out),
                Type::NUMERIC => Err("numeric parameters are not used".into()),
                _ => n.to_string().to_sql(&Type::TEXT, out),
            },
            Value::Text(s) => match *ty {
                Type::INT8 => s.parse::<i64>()?.to_sql(ty, out),
                _ => s.as_str().to_sql(&Type::TEXT, out),
            },
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

fn pg_values(params: &[&dyn Param]) -> Vec<PgValue> {
    params.iter().map(|p| PgValue(p.value())).collect()
}

fn pg_refs(values: &[PgValue]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    values
        .iter()
        .map(|v| v as &(dyn postgres::types::ToSql + Sync))
        .collect()
}

fn pg_column(row: &postgres::Row, index: usize) -> Result<Value, StoreError> {
    use postgres::types::Type;
    let column = row.columns().get(index).ok_or(StoreError::Column {
        index,
        message: "no such column".into(),
    })?;
    let value = match *column.type_() {
        Type::INT8 => row.try_get::<_, Option<i64>>(index)?.map(Value::Int),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(index)?
            .map(|n| Value::Int(n.into())),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(index)?
            .map(|n| Value::Int(n.into())),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(index)?
            .map(|b| Value::Int(b.into())),
        Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => {
            row.try_get::<_, Option<String>>(index)?.map(Value::Text)
        }
        ref other => {
            return Err(StoreError::Column {
                index,
                message: format!("the column type {other} is not read by the store"),
            })
        }
    };
    Ok(value.unwrap_or(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_spelling_becomes_postgres_spelling() {
        assert_eq!(
            to_postgres("SELECT id FROM jobs INDEXED BY jobs_prunable WHERE a = ?1 AND b = '?2' AND c = ?12"),
            "SELECT id FROM jobs  WHERE a = $1 AND b = '?2' AND c = $12"
        );
    }

    #[test]
    fn values_round_trip_through_sqlite() {
        let conn = Connection::sqlite(rusqlite::Connection::open_in_memory().expect("db"));
        let (n, s, none, flag): (i64, String, Option<String>, bool) = conn
            .query_row(
                "SELECT ?1, ?2, ?3, ?4",
                params![7_i64, "text", None::<String>, true],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .expect("row");
        assert_eq!((n, s.as_str(), none, flag), (7, "text", None, true));
        let missing = conn
            .query_row("SELECT 1 WHERE 0", params![], |r| r.get::<_, i64>(0))
            .optional()
            .expect("query");
        assert_eq!(missing, None);
        let wrong = conn.query_row("SELECT 'x'", params![], |r| r.get::<_, i64>(0));
        assert!(matches!(wrong, Err(StoreError::Column { index: 0, .. })));
    }

    #[test]
    fn a_dropped_transaction_writes_nothing() {
        let conn = Connection::sqlite(rusqlite::Connection::open_in_memory().expect("db"));
        conn.execute_batch("CREATE TABLE t (x INTEGER)")
            .expect("table");
        {
            let tx = conn.transaction().expect("begin");
            tx.execute("INSERT INTO t VALUES (1)", params![])
                .expect("insert");
        }
        let tx = conn.transaction().expect("begin");
        tx.execute("INSERT INTO t VALUES (2)", params![])
            .expect("insert");
        tx.commit().expect("commit");
        let rows: Vec<i64> = conn
            .query("SELECT x FROM t", params![], |r| r.get(0))
            .expect("rows");
        assert_eq!(rows, vec![2]);
    }
}
