"""The method's text contracts: `<fi>` templates and `<excerpt>` answer markers (docs/method.md, "Templates" and
"Excerpt answers")."""
