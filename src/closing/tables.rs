//! The org-scoped tables as the catalog has them, for the erasure: every table with
//! an `org_id` column, in an order that deletes children before their parents, and
//! the other columns whose foreign key to `organizations` deletes with the org.

use std::collections::BTreeMap;

use sqlx::PgConnection;

/// Deletes every row of the org in every table with an `org_id` column, children
/// before parents, and the rows of other tables that a foreign key to
/// `organizations` would delete with the org. Returns the rows deleted per table.
pub async fn delete_rows(conn: &mut PgConnection, org_id: i64) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut erased = BTreeMap::new();
    for (table, column) in cascading_references(conn).await? {
        let sql = format!("delete from public.{} where {} = $1", quote(&table), quote(&column));
        let n = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(org_id).execute(&mut *conn).await?.rows_affected();
        *erased.entry(table).or_insert(0) += n;
    }
    let tables = org_tables_in_delete_order(conn).await?;
    // Twice: a trigger of a later table may have written to an earlier one.
    for _ in 0..2 {
        for table in &tables {
            let sql = format!("delete from public.{} where org_id = $1", quote(table));
            let n = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(org_id).execute(&mut *conn).await?.rows_affected();
            *erased.entry(table.clone()).or_insert(0) += n;
        }
    }
    Ok(erased)
}

/// `"name"`, as SQL quotes an identifier (names come from the catalog, never input).
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Every table of the schema with an `org_id` column, ordered so that a table comes
/// before every table it references (children first), so that each delete finds
/// its own rows rather than leaving them to a cascade, and no foreign key without a
/// cascade stops it.
pub async fn org_tables_in_delete_order(conn: &mut PgConnection) -> anyhow::Result<Vec<String>> {
    let tables: Vec<String> = sqlx::query_scalar(
        "select c.relname::text from pg_class c join pg_attribute a on a.attrelid = c.oid
         where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p') and not c.relispartition
           and a.attname = 'org_id' and not a.attisdropped
         order by 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    let edges: Vec<(String, String)> = sqlx::query_as(
        "select ch.relname::text, pa.relname::text from pg_constraint con
         join pg_class ch on ch.oid = con.conrelid join pg_class pa on pa.oid = con.confrelid
         where con.contype = 'f' and ch.relnamespace = 'public'::regnamespace
           and pa.relnamespace = 'public'::regnamespace and ch.oid <> pa.oid",
    )
    .fetch_all(&mut *conn)
    .await?;
    delete_order(&tables, &edges)
}

/// Orders `tables` children first by `edges` (child, parent); a cycle is an error.
fn delete_order(tables: &[String], edges: &[(String, String)]) -> anyhow::Result<Vec<String>> {
    let mut left: Vec<String> = tables.to_vec();
    let mut order = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let free: Vec<String> = left
            .iter()
            .filter(|t| !edges.iter().any(|(child, parent)| parent == *t && child != *t && left.contains(child)))
            .cloned()
            .collect();
        anyhow::ensure!(!free.is_empty(), "the org-scoped tables {left:?} reference each other in a cycle");
        left.retain(|t| !free.contains(t));
        order.extend(free);
    }
    Ok(order)
}

/// `(table, column)` of every single-column foreign key to `organizations` other
/// than `org_id` that deletes its rows with the org (`on delete cascade`): what
/// deleting the org would remove, though its row stays (an API token limited to it).
async fn cascading_references(conn: &mut PgConnection) -> sqlx::Result<Vec<(String, String)>> {
    sqlx::query_as(
        "select ch.relname::text, a.attname::text from pg_constraint con
         join pg_class ch on ch.oid = con.conrelid
         join pg_attribute a on a.attrelid = con.conrelid and a.attnum = con.conkey[1]
         where con.contype = 'f' and con.confrelid = 'public.organizations'::regclass
           and cardinality(con.conkey) = 1 and a.attname <> 'org_id' and con.confdeltype = 'c'
         order by 1, 2",
    )
    .fetch_all(conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::delete_order;

    #[test]
    fn children_come_before_their_parents_and_a_cycle_is_refused() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let e = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
        let order = delete_order(
            &s(&["chapters", "memberships", "regions", "invoices", "payments"]),
            &e(&[
                ("chapters", "regions"),
                ("memberships", "chapters"),
                ("invoices", "memberships"),
                ("payments", "invoices"),
                ("payments", "payments"),
            ]),
        )
        .unwrap();
        let at = |t: &str| order.iter().position(|x| x == t).unwrap();
        assert!(at("payments") < at("invoices") && at("invoices") < at("memberships"));
        assert!(at("memberships") < at("chapters") && at("chapters") < at("regions"));
        assert!(delete_order(&s(&["a", "b"]), &e(&[("a", "b"), ("b", "a")])).is_err());
    }
}
