"""Labels from annotation tools: export formats read into votes (a registry a task type
adds formats to), votes resolved into labels, and the import that merges them into the
labeled data as a new version."""
