"""The curriculum study: one base run config, turned into variants with equal per-source tokens,
trained over seeds, evaluated and compared (`megacrystal study`)."""
