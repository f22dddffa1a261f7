"""The method's text contracts: `<fi>` templates and `<excerpt>` answer markers (DESIGN.md §2)."""
