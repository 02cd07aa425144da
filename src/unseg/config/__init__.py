"""The pipeline's config: the method registries, the schema and its validation, the stage variants and their chains."""
