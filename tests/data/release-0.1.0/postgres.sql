CREATE TABLE public.artifacts (
    id integer NOT NULL,
    version_id integer NOT NULL,
    target character varying(32) NOT NULL,
    runtime character varying(32) NOT NULL,
    sha256 character varying(64) NOT NULL,
    size integer NOT NULL,
    io_signature json NOT NULL,
    golden json NOT NULL,
    latency_budget_ms double precision NOT NULL,
    report json NOT NULL,
    created_at timestamp with time zone NOT NULL
);
CREATE SEQUENCE public.artifacts_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.artifacts_id_seq OWNED BY public.artifacts.id;
CREATE TABLE public.devices (
    id character varying(64) NOT NULL,
    arch character varying(32) NOT NULL,
    cpu_count integer NOT NULL,
    ram_bytes bigint NOT NULL,
    os character varying(128) NOT NULL,
    agent_version character varying(64) NOT NULL,
    runtimes json NOT NULL,
    accelerators json NOT NULL,
    labels json NOT NULL,
    online boolean NOT NULL,
    status character varying(16) NOT NULL,
    detail text,
    active json,
    previous json,
    reported_last_serial bigint NOT NULL,
    last_serial_issued bigint NOT NULL,
    last_telemetry json,
    first_seen timestamp with time zone NOT NULL,
    last_seen timestamp with time zone NOT NULL
);
CREATE TABLE public.events (
    id integer NOT NULL,
    event_id character varying(36) NOT NULL,
    device_id character varying(64) NOT NULL,
    type character varying(32) NOT NULL,
    at timestamp with time zone NOT NULL,
    model_id character varying(128),
    version character varying(64),
    serial bigint,
    reason text,
    figures json NOT NULL,
    received_at timestamp with time zone NOT NULL
);
CREATE SEQUENCE public.events_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.events_id_seq OWNED BY public.events.id;
CREATE TABLE public.model_versions (
    id integer NOT NULL,
    model_id integer NOT NULL,
    version character varying(64) NOT NULL,
    source_sha256 character varying(64) NOT NULL,
    source_size integer NOT NULL,
    recipe json NOT NULL,
    summary json NOT NULL,
    created_at timestamp with time zone NOT NULL
);
CREATE SEQUENCE public.model_versions_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.model_versions_id_seq OWNED BY public.model_versions.id;
CREATE TABLE public.models (
    id integer NOT NULL,
    name character varying(128) NOT NULL,
    created_at timestamp with time zone NOT NULL
);
CREATE SEQUENCE public.models_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.models_id_seq OWNED BY public.models.id;
CREATE TABLE public.rollout_devices (
    id integer NOT NULL,
    rollout_id integer NOT NULL,
    device_id character varying(64) NOT NULL,
    wave integer NOT NULL,
    state character varying(16) NOT NULL,
    target character varying(32),
    sha256 character varying(64),
    serial bigint,
    previous json,
    signed_manifest text,
    published boolean NOT NULL,
    sent_at timestamp with time zone,
    converged_at timestamp with time zone,
    reason text,
    updated_at timestamp with time zone NOT NULL
);
CREATE SEQUENCE public.rollout_devices_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.rollout_devices_id_seq OWNED BY public.rollout_devices.id;
CREATE TABLE public.rollouts (
    id integer NOT NULL,
    model character varying(128) NOT NULL,
    version character varying(64) NOT NULL,
    selector character varying(512) NOT NULL,
    waves json NOT NULL,
    wave_spec character varying(128) NOT NULL,
    policy json NOT NULL,
    status character varying(16) NOT NULL,
    current_wave integer NOT NULL,
    wave_settled_at timestamp with time zone,
    reason text,
    gate json,
    created_at timestamp with time zone NOT NULL,
    updated_at timestamp with time zone NOT NULL
);
CREATE SEQUENCE public.rollouts_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.rollouts_id_seq OWNED BY public.rollouts.id;
CREATE TABLE public.system_rollups (
    id integer NOT NULL,
    resolution_s integer NOT NULL,
    bucket_start timestamp with time zone NOT NULL,
    device_id character varying(64) NOT NULL,
    samples integer NOT NULL,
    cpu_percent double precision NOT NULL,
    mem_used_bytes double precision NOT NULL,
    mem_total_bytes double precision NOT NULL,
    rss_bytes double precision NOT NULL,
    temperature_c double precision
);
CREATE SEQUENCE public.system_rollups_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.system_rollups_id_seq OWNED BY public.system_rollups.id;
CREATE TABLE public.system_samples (
    id integer NOT NULL,
    device_id character varying(64) NOT NULL,
    window_end timestamp with time zone NOT NULL,
    cpu_percent double precision NOT NULL,
    process_cpu_percent double precision NOT NULL,
    rss_bytes bigint NOT NULL,
    mem_used_bytes bigint NOT NULL,
    mem_total_bytes bigint NOT NULL,
    temperature_c double precision,
    disk_free_bytes bigint NOT NULL
);
CREATE SEQUENCE public.system_samples_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.system_samples_id_seq OWNED BY public.system_samples.id;
CREATE TABLE public.telemetry (
    id integer NOT NULL,
    device_id character varying(64) NOT NULL,
    window_start timestamp with time zone NOT NULL,
    window_end timestamp with time zone NOT NULL,
    model_id character varying(128) NOT NULL,
    version character varying(64) NOT NULL,
    requests integer NOT NULL,
    errors integer NOT NULL,
    client_errors integer NOT NULL,
    p50_ms double precision,
    p95_ms double precision,
    p99_ms double precision,
    max_ms double precision,
    throughput_rps double precision NOT NULL
);
CREATE SEQUENCE public.telemetry_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.telemetry_id_seq OWNED BY public.telemetry.id;
CREATE TABLE public.telemetry_rollup_marks (
    resolution_s integer NOT NULL,
    rolled_until timestamp with time zone NOT NULL
);
CREATE SEQUENCE public.telemetry_rollup_marks_resolution_s_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.telemetry_rollup_marks_resolution_s_seq OWNED BY public.telemetry_rollup_marks.resolution_s;
CREATE TABLE public.telemetry_rollups (
    id integer NOT NULL,
    resolution_s integer NOT NULL,
    bucket_start timestamp with time zone NOT NULL,
    device_id character varying(64) NOT NULL,
    model_id character varying(128) NOT NULL,
    version character varying(64) NOT NULL,
    windows integer NOT NULL,
    requests bigint NOT NULL,
    errors bigint NOT NULL,
    p50_ms double precision,
    p95_ms double precision,
    p99_ms double precision,
    max_ms double precision
);
CREATE SEQUENCE public.telemetry_rollups_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE public.telemetry_rollups_id_seq OWNED BY public.telemetry_rollups.id;
ALTER TABLE ONLY public.artifacts ALTER COLUMN id SET DEFAULT nextval('public.artifacts_id_seq'::regclass);
ALTER TABLE ONLY public.events ALTER COLUMN id SET DEFAULT nextval('public.events_id_seq'::regclass);
ALTER TABLE ONLY public.model_versions ALTER COLUMN id SET DEFAULT nextval('public.model_versions_id_seq'::regclass);
ALTER TABLE ONLY public.models ALTER COLUMN id SET DEFAULT nextval('public.models_id_seq'::regclass);
ALTER TABLE ONLY public.rollout_devices ALTER COLUMN id SET DEFAULT nextval('public.rollout_devices_id_seq'::regclass);
ALTER TABLE ONLY public.rollouts ALTER COLUMN id SET DEFAULT nextval('public.rollouts_id_seq'::regclass);
ALTER TABLE ONLY public.system_rollups ALTER COLUMN id SET DEFAULT nextval('public.system_rollups_id_seq'::regclass);
ALTER TABLE ONLY public.system_samples ALTER COLUMN id SET DEFAULT nextval('public.system_samples_id_seq'::regclass);
ALTER TABLE ONLY public.telemetry ALTER COLUMN id SET DEFAULT nextval('public.telemetry_id_seq'::regclass);
ALTER TABLE ONLY public.telemetry_rollup_marks ALTER COLUMN resolution_s SET DEFAULT nextval('public.telemetry_rollup_marks_resolution_s_seq'::regclass);
ALTER TABLE ONLY public.telemetry_rollups ALTER COLUMN id SET DEFAULT nextval('public.telemetry_rollups_id_seq'::regclass);
INSERT INTO public.artifacts VALUES (1, 1, 'onnx-fp32', 'onnxruntime', 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 1234, '{"inputs": [{"name": "x", "dtype": "float32", "shape": [null, 64]}], "outputs": [{"name": "y", "dtype": "float32", "shape": [null, 10]}]}', '{"pairs": []}', 5, '{"size": 1234}', '2026-11-20 12:00:00+00');
INSERT INTO public.artifacts VALUES (2, 2, 'onnx-fp32', 'onnxruntime', 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', 1234, '{"inputs": [{"name": "x", "dtype": "float32", "shape": [null, 64]}], "outputs": [{"name": "y", "dtype": "float32", "shape": [null, 10]}]}', '{"pairs": []}', 5, '{"size": 1234}', '2026-11-20 12:00:00+00');
INSERT INTO public.devices VALUES ('pi-0', 'aarch64', 4, 4294967296, 'Linux', '0.1.0', '[{"name": "onnxruntime", "version": "1.20.1"}]', '[]', '{"site": "plant-3"}', true, 'serving', NULL, '{"model_id": "digits", "version": "2", "serial": 2, "sha256": "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "target": "onnx-fp32"}', 'null', 2, 2, NULL, '2026-11-20 12:00:00+00', '2026-11-20 12:05:00+00');
INSERT INTO public.devices VALUES ('pi-1', 'aarch64', 4, 4294967296, 'Linux', '0.1.0', '[{"name": "onnxruntime", "version": "1.20.1"}]', '[]', '{"site": "plant-3"}', true, 'serving', NULL, '{"model_id": "digits", "version": "1", "serial": 1, "sha256": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "target": "onnx-fp32"}', 'null', 1, 1, NULL, '2026-11-20 12:00:00+00', '2026-11-20 12:05:00+00');
INSERT INTO public.devices VALUES ('pi-2', 'aarch64', 4, 4294967296, 'Linux', '0.1.0', '[{"name": "onnxruntime", "version": "1.20.1"}]', '[]', '{"site": "plant-3"}', false, 'offline', NULL, '{"model_id": "digits", "version": "1", "serial": 1, "sha256": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "target": "onnx-fp32"}', 'null', 1, 1, NULL, '2026-11-20 12:00:00+00', '2026-11-20 12:05:00+00');
INSERT INTO public.events VALUES (1, '00000000-0000-4000-8000-000000000001', 'pi-0', 'swapped', '2026-11-20 12:00:00+00', 'digits', '2', 2, NULL, '{"p95_ms": 1.5}', '2026-11-20 12:00:00+00');
INSERT INTO public.model_versions VALUES (1, 1, '1', 'cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc', 1000, '{"steps": []}', '{}', '2026-11-20 12:00:00+00');
INSERT INTO public.model_versions VALUES (2, 1, '2', 'cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc', 1000, '{"steps": []}', '{}', '2026-11-20 12:00:00+00');
INSERT INTO public.models VALUES (1, 'digits', '2026-11-20 12:00:00+00');
INSERT INTO public.rollout_devices VALUES (1, 1, 'pi-0', 0, 'active', 'onnx-fp32', 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', 2, '{"model_id": "digits", "version": "1", "serial": 1, "sha256": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "target": "onnx-fp32"}', '{"v":1,"kind":"manifest","body":{}}', true, '2026-11-20 12:00:00+00', '2026-11-20 12:01:00+00', NULL, '2026-11-20 12:00:00+00');
INSERT INTO public.rollout_devices VALUES (2, 1, 'pi-1', 1, 'sent', 'onnx-fp32', 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', 2, '{"model_id": "digits", "version": "1", "serial": 1, "sha256": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "target": "onnx-fp32"}', '{"v":1,"kind":"manifest","body":{}}', true, '2026-11-20 12:03:00+00', NULL, NULL, '2026-11-20 12:00:00+00');
INSERT INTO public.rollout_devices VALUES (3, 1, 'pi-2', 1, 'planned', NULL, NULL, NULL, 'null', NULL, false, NULL, NULL, NULL, '2026-11-20 12:00:00+00');
INSERT INTO public.rollouts VALUES (1, 'digits', '2', 'site=plant-3', '[1, 3]', '1,100%', '{"max_failures": "0", "max_error_rate": 0.01, "max_p95_regression": 0.2, "soak_s": 60.0, "min_requests": 20, "on_breach": "rollback"}', 'running', 1, NULL, NULL, '{"wave": 0, "passed": true, "checks": []}', '2026-11-20 12:00:00+00', '2026-11-20 12:00:00+00');
INSERT INTO public.system_samples VALUES (1, 'pi-0', '2026-11-20 12:00:10+00', 10, 5, 104857600, 1073741824, 4294967296, 50, 10737418240);
INSERT INTO public.telemetry VALUES (1, 'pi-0', '2026-11-20 12:00:00+00', '2026-11-20 12:00:10+00', 'digits', '2', 100, 0, 0, 1, 1.5, 2, 3, 10);
SELECT pg_catalog.setval('public.artifacts_id_seq', 2, true);
SELECT pg_catalog.setval('public.events_id_seq', 1, true);
SELECT pg_catalog.setval('public.model_versions_id_seq', 2, true);
SELECT pg_catalog.setval('public.models_id_seq', 1, true);
SELECT pg_catalog.setval('public.rollout_devices_id_seq', 3, true);
SELECT pg_catalog.setval('public.rollouts_id_seq', 1, true);
SELECT pg_catalog.setval('public.system_rollups_id_seq', 1, false);
SELECT pg_catalog.setval('public.system_samples_id_seq', 1, true);
SELECT pg_catalog.setval('public.telemetry_id_seq', 1, true);
SELECT pg_catalog.setval('public.telemetry_rollup_marks_resolution_s_seq', 1, false);
SELECT pg_catalog.setval('public.telemetry_rollups_id_seq', 1, false);
ALTER TABLE ONLY public.artifacts
    ADD CONSTRAINT pk_artifacts PRIMARY KEY (id);
ALTER TABLE ONLY public.devices
    ADD CONSTRAINT pk_devices PRIMARY KEY (id);
ALTER TABLE ONLY public.events
    ADD CONSTRAINT pk_events PRIMARY KEY (id);
ALTER TABLE ONLY public.model_versions
    ADD CONSTRAINT pk_model_versions PRIMARY KEY (id);
ALTER TABLE ONLY public.models
    ADD CONSTRAINT pk_models PRIMARY KEY (id);
ALTER TABLE ONLY public.rollout_devices
    ADD CONSTRAINT pk_rollout_devices PRIMARY KEY (id);
ALTER TABLE ONLY public.rollouts
    ADD CONSTRAINT pk_rollouts PRIMARY KEY (id);
ALTER TABLE ONLY public.system_rollups
    ADD CONSTRAINT pk_system_rollups PRIMARY KEY (id);
ALTER TABLE ONLY public.system_samples
    ADD CONSTRAINT pk_system_samples PRIMARY KEY (id);
ALTER TABLE ONLY public.telemetry
    ADD CONSTRAINT pk_telemetry PRIMARY KEY (id);
ALTER TABLE ONLY public.telemetry_rollup_marks
    ADD CONSTRAINT pk_telemetry_rollup_marks PRIMARY KEY (resolution_s);
ALTER TABLE ONLY public.telemetry_rollups
    ADD CONSTRAINT pk_telemetry_rollups PRIMARY KEY (id);
ALTER TABLE ONLY public.artifacts
    ADD CONSTRAINT uq_artifacts_version_id UNIQUE (version_id, target);
ALTER TABLE ONLY public.events
    ADD CONSTRAINT uq_events_event_id UNIQUE (event_id);
ALTER TABLE ONLY public.model_versions
    ADD CONSTRAINT uq_model_versions_model_id UNIQUE (model_id, version);
ALTER TABLE ONLY public.rollout_devices
    ADD CONSTRAINT uq_rollout_devices_rollout_id UNIQUE (rollout_id, device_id);
ALTER TABLE ONLY public.system_rollups
    ADD CONSTRAINT uq_system_rollups_resolution_s UNIQUE (resolution_s, device_id, bucket_start);
ALTER TABLE ONLY public.telemetry_rollups
    ADD CONSTRAINT uq_telemetry_rollups_resolution_s UNIQUE (resolution_s, device_id, model_id, version, bucket_start);
CREATE INDEX ix_artifacts_sha256 ON public.artifacts USING btree (sha256);
CREATE INDEX ix_artifacts_version_id ON public.artifacts USING btree (version_id);
CREATE INDEX ix_events_device_at ON public.events USING btree (device_id, at);
CREATE INDEX ix_model_versions_model_id ON public.model_versions USING btree (model_id);
CREATE UNIQUE INDEX ix_models_name ON public.models USING btree (name);
CREATE INDEX ix_rollout_devices_device_id ON public.rollout_devices USING btree (device_id);
CREATE INDEX ix_rollouts_status ON public.rollouts USING btree (status);
CREATE INDEX ix_system_device_end ON public.system_samples USING btree (device_id, window_end);
CREATE INDEX ix_system_rollups_res_bucket ON public.system_rollups USING btree (resolution_s, bucket_start);
CREATE INDEX ix_telemetry_device_end ON public.telemetry USING btree (device_id, window_end);
CREATE INDEX ix_telemetry_rollups_res_bucket ON public.telemetry_rollups USING btree (resolution_s, bucket_start);
CREATE INDEX ix_telemetry_version_end ON public.telemetry USING btree (model_id, version, window_end);
ALTER TABLE ONLY public.artifacts
    ADD CONSTRAINT fk_artifacts_version_id_model_versions FOREIGN KEY (version_id) REFERENCES public.model_versions(id) ON DELETE CASCADE;
ALTER TABLE ONLY public.model_versions
    ADD CONSTRAINT fk_model_versions_model_id_models FOREIGN KEY (model_id) REFERENCES public.models(id) ON DELETE CASCADE;
ALTER TABLE ONLY public.rollout_devices
    ADD CONSTRAINT fk_rollout_devices_rollout_id_rollouts FOREIGN KEY (rollout_id) REFERENCES public.rollouts(id) ON DELETE CASCADE;
