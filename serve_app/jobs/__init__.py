"""Jobs: long-form and bulk synthesis rendered in the background (docs/jobs.md)."""
