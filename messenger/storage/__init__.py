"""The only package that speaks SQL: shard routing, pools, migrations, queries."""
