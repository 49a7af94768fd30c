"""The PostgreSQL schema, one numbered script per version."""
