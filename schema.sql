-- The two tables of the shared database that public-status reads, as the admin
-- service owns them (columns the service does not read are included on purpose).
-- Used by `demo.py` and the tests; the service itself never creates anything.
CREATE TABLE projects (
    id          bigserial PRIMARY KEY,
    slug        text UNIQUE NOT NULL,
    name        text NOT NULL DEFAULT '',
    is_active   boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE integration_configs (
    id                        bigserial PRIMARY KEY,
    project_id                bigint NOT NULL REFERENCES projects(id),
    api_base_url              text,
    status_endpoint           text,
    auth_type                 text,
    auth_credentials          jsonb,
    timeout_seconds           numeric,
    status_mapping            jsonb,
    polling_interval_seconds  numeric,
    updated_at                timestamptz NOT NULL DEFAULT now()
);
