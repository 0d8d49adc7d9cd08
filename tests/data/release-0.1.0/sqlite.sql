BEGIN TRANSACTION;
CREATE TABLE artifacts (
	id INTEGER NOT NULL, 
	version_id INTEGER NOT NULL, 
	target VARCHAR(32) NOT NULL, 
	runtime VARCHAR(32) NOT NULL, 
	sha256 VARCHAR(64) NOT NULL, 
	size INTEGER NOT NULL, 
	io_signature JSON NOT NULL, 
	golden JSON NOT NULL, 
	latency_budget_ms FLOAT NOT NULL, 
	report JSON NOT NULL, 
	created_at DATETIME NOT NULL, 
	CONSTRAINT pk_artifacts PRIMARY KEY (id), 
	CONSTRAINT uq_artifacts_version_id UNIQUE (version_id, target), 
	CONSTRAINT fk_artifacts_version_id_model_versions FOREIGN KEY(version_id) REFERENCES model_versions (id) ON DELETE CASCADE
);
INSERT INTO "artifacts" VALUES(1,1,'onnx-fp32','onnxruntime','aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',1234,'{"inputs": [{"name": "x", "dtype": "float32", "shape": [null, 64]}], "outputs": [{"name": "y", "dtype": "float32", "shape": [null, 10]}]}','{"pairs": []}',5.0,'{"size": 1234}','2026-11-20 12:00:00.000000');
INSERT INTO "artifacts" VALUES(2,2,'onnx-fp32','onnxruntime','bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb',1234,'{"inputs": [{"name": "x", "dtype": "float32", "shape": [null, 64]}], "outputs": [{"name": "y", "dtype": "float32", "shape": [null, 10]}]}','{"pairs": []}',5.0,'{"size": 1234}','2026-11-20 12:00:00.000000');
CREATE TABLE devices (
	id VARCHAR(64) NOT NULL, 
	arch VARCHAR(32) NOT NULL, 
	cpu_count INTEGER NOT NULL, 
	ram_bytes BIGINT NOT NULL, 
	os VARCHAR(128) NOT NULL, 
	agent_version VARCHAR(64) NOT NULL, 
	runtimes JSON NOT NULL, 
	accelerators JSON NOT NULL, 
	labels JSON NOT NULL, 
	online BOOLEAN NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	detail TEXT, 
	active JSON, 
	previous JSON, 
	reported_last_serial BIGINT NOT NULL, 
	last_serial_issued BIGINT NOT NULL, 
	last_telemetry JSON, 
	first_seen DATETIME NOT NULL, 
	last_seen DATETIME NOT NULL, 
	CONSTRAINT pk_devices PRIMARY KEY (id)
);
INSERT INTO "devices" VALUES('pi-0','aarch64',4,4294967296,'Linux','0.1.0','[{"name": "onnxruntime", "version": "1.20.1"}]','[]','{"site": "plant-3"}',1,'serving',NULL,'{"model_id": "digits", "version": "2", "serial": 2, "sha256": "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "target": "onnx-fp32"}','null',2,2,NULL,'2026-11-20 12:00:00.000000','2026-11-20 12:05:00.000000');
INSERT INTO "devices" VALUES('pi-1','aarch64',4,4294967296,'Linux','0.1.0','[{"name": "onnxruntime", "version": "1.20.1"}]','[]','{"site": "plant-3"}',1,'serving',NULL,'{"model_id": "digits", "version": "1", "serial": 1, "sha256": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "target": "onnx-fp32"}','null',1,1,NULL,'2026-11-20 12:00:00.000000','2026-11-20 12:05:00.000000');
INSERT INTO "devices" VALUES('pi-2','aarch64',4,4294967296,'Linux','0.1.0','[{"name": "onnxruntime", "version": "1.20.1"}]','[]','{"site": "plant-3"}',0,'offline',NULL,'{"model_id": "digits", "version": "1", "serial": 1, "sha256": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "target": "onnx-fp32"}','null',1,1,NULL,'2026-11-20 12:00:00.000000','2026-11-20 12:05:00.000000');
CREATE TABLE events (
	id INTEGER NOT NULL, 
	event_id VARCHAR(36) NOT NULL, 
	device_id VARCHAR(64) NOT NULL, 
	type VARCHAR(32) NOT NULL, 
	at DATETIME NOT NULL, 
	model_id VARCHAR(128), 
	version VARCHAR(64), 
	serial BIGINT, 
	reason TEXT, 
	figures JSON NOT NULL, 
	received_at DATETIME NOT NULL, 
	CONSTRAINT pk_events PRIMARY KEY (id), 
	CONSTRAINT uq_events_event_id UNIQUE (event_id)
);
INSERT INTO "events" VALUES(1,'00000000-0000-4000-8000-000000000001','pi-0','swapped','2026-11-20 12:00:00.000000','digits','2',2,NULL,'{"p95_ms": 1.5}','2026-11-20 12:00:00.000000');
CREATE TABLE model_versions (
	id INTEGER NOT NULL, 
	model_id INTEGER NOT NULL, 
	version VARCHAR(64) NOT NULL, 
	source_sha256 VARCHAR(64) NOT NULL, 
	source_size INTEGER NOT NULL, 
	recipe JSON NOT NULL, 
	summary JSON NOT NULL, 
	created_at DATETIME NOT NULL, 
	CONSTRAINT pk_model_versions PRIMARY KEY (id), 
	CONSTRAINT uq_model_versions_model_id UNIQUE (model_id, version), 
	CONSTRAINT fk_model_versions_model_id_models FOREIGN KEY(model_id) REFERENCES models (id) ON DELETE CASCADE
);
INSERT INTO "model_versions" VALUES(1,1,'1','cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc',1000,'{"steps": []}','{}','2026-11-20 12:00:00.000000');
INSERT INTO "model_versions" VALUES(2,1,'2','cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc',1000,'{"steps": []}','{}','2026-11-20 12:00:00.000000');
CREATE TABLE models (
	id INTEGER NOT NULL, 
	name VARCHAR(128) NOT NULL, 
	created_at DATETIME NOT NULL, 
	CONSTRAINT pk_models PRIMARY KEY (id)
);
INSERT INTO "models" VALUES(1,'digits','2026-11-20 12:00:00.000000');
CREATE TABLE rollout_devices (
	id INTEGER NOT NULL, 
	rollout_id INTEGER NOT NULL, 
	device_id VARCHAR(64) NOT NULL, 
	wave INTEGER NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	target VARCHAR(32), 
	sha256 VARCHAR(64), 
	serial BIGINT, 
	previous JSON, 
	signed_manifest TEXT, 
	published BOOLEAN NOT NULL, 
	sent_at DATETIME, 
	converged_at DATETIME, 
	reason TEXT, 
	updated_at DATETIME NOT NULL, 
	CONSTRAINT pk_rollout_devices PRIMARY KEY (id), 
	CONSTRAINT uq_rollout_devices_rollout_id UNIQUE (rollout_id, device_id), 
	CONSTRAINT fk_rollout_devices_rollout_id_rollouts FOREIGN KEY(rollout_id) REFERENCES rollouts (id) ON DELETE CASCADE
);
INSERT INTO "rollout_devices" VALUES(1,1,'pi-0',0,'active','onnx-fp32','bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb',2,'{"model_id": "digits", "version": "1", "serial": 1, "sha256": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "target": "onnx-fp32"}','{"v":1,"kind":"manifest","body":{}}',1,'2026-11-20 12:00:00.000000','2026-11-20 12:01:00.000000',NULL,'2026-11-20 12:00:00.000000');
INSERT INTO "rollout_devices" VALUES(2,1,'pi-1',1,'sent','onnx-fp32','bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb',2,'{"model_id": "digits", "version": "1", "serial": 1, "sha256": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "target": "onnx-fp32"}','{"v":1,"kind":"manifest","body":{}}',1,'2026-11-20 12:03:00.000000',NULL,NULL,'2026-11-20 12:00:00.000000');
INSERT INTO "rollout_devices" VALUES(3,1,'pi-2',1,'planned',NULL,NULL,NULL,'null',NULL,0,NULL,NULL,NULL,'2026-11-20 12:00:00.000000');
CREATE TABLE rollouts (
	id INTEGER NOT NULL, 
	model VARCHAR(128) NOT NULL, 
	version VARCHAR(64) NOT NULL, 
	selector VARCHAR(512) NOT NULL, 
	waves JSON NOT NULL, 
	wave_spec VARCHAR(128) NOT NULL, 
	policy JSON NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	current_wave INTEGER NOT NULL, 
	wave_settled_at DATETIME, 
	reason TEXT, 
	gate JSON, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	CONSTRAINT pk_rollouts PRIMARY KEY (id)
);
INSERT INTO "rollouts" VALUES(1,'digits','2','site=plant-3','[1, 3]','1,100%','{"max_failures": "0", "max_error_rate": 0.01, "max_p95_regression": 0.2, "soak_s": 60.0, "min_requests": 20, "on_breach": "rollback"}','running',1,NULL,NULL,'{"wave": 0, "passed": true, "checks": []}','2026-11-20 12:00:00.000000','2026-11-20 12:00:00.000000');
CREATE TABLE system_rollups (
	id INTEGER NOT NULL, 
	resolution_s INTEGER NOT NULL, 
	bucket_start DATETIME NOT NULL, 
	device_id VARCHAR(64) NOT NULL, 
	samples INTEGER NOT NULL, 
	cpu_percent FLOAT NOT NULL, 
	mem_used_bytes FLOAT NOT NULL, 
	mem_total_bytes FLOAT NOT NULL, 
	rss_bytes FLOAT NOT NULL, 
	temperature_c FLOAT, 
	CONSTRAINT pk_system_rollups PRIMARY KEY (id), 
	CONSTRAINT uq_system_rollups_resolution_s UNIQUE (resolution_s, device_id, bucket_start)
);
CREATE TABLE system_samples (
	id INTEGER NOT NULL, 
	device_id VARCHAR(64) NOT NULL, 
	window_end DATETIME NOT NULL, 
	cpu_percent FLOAT NOT NULL, 
	process_cpu_percent FLOAT NOT NULL, 
	rss_bytes BIGINT NOT NULL, 
	mem_used_bytes BIGINT NOT NULL, 
	mem_total_bytes BIGINT NOT NULL, 
	temperature_c FLOAT, 
	disk_free_bytes BIGINT NOT NULL, 
	CONSTRAINT pk_system_samples PRIMARY KEY (id)
);
INSERT INTO "system_samples" VALUES(1,'pi-0','2026-11-20 12:00:10.000000',10.0,5.0,104857600,1073741824,4294967296,50.0,10737418240);
CREATE TABLE telemetry (
	id INTEGER NOT NULL, 
	device_id VARCHAR(64) NOT NULL, 
	window_start DATETIME NOT NULL, 
	window_end DATETIME NOT NULL, 
	model_id VARCHAR(128) NOT NULL, 
	version VARCHAR(64) NOT NULL, 
	requests INTEGER NOT NULL, 
	errors INTEGER NOT NULL, 
	client_errors INTEGER NOT NULL, 
	p50_ms FLOAT, 
	p95_ms FLOAT, 
	p99_ms FLOAT, 
	max_ms FLOAT, 
	throughput_rps FLOAT NOT NULL, 
	CONSTRAINT pk_telemetry PRIMARY KEY (id)
);
INSERT INTO "telemetry" VALUES(1,'pi-0','2026-11-20 12:00:00.000000','2026-11-20 12:00:10.000000','digits','2',100,0,0,1.0,1.5,2.0,3.0,10.0);
CREATE TABLE telemetry_rollup_marks (
	resolution_s INTEGER NOT NULL, 
	rolled_until DATETIME NOT NULL, 
	CONSTRAINT pk_telemetry_rollup_marks PRIMARY KEY (resolution_s)
);
CREATE TABLE telemetry_rollups (
	id INTEGER NOT NULL, 
	resolution_s INTEGER NOT NULL, 
	bucket_start DATETIME NOT NULL, 
	device_id VARCHAR(64) NOT NULL, 
	model_id VARCHAR(128) NOT NULL, 
	version VARCHAR(64) NOT NULL, 
	windows INTEGER NOT NULL, 
	requests BIGINT NOT NULL, 
	errors BIGINT NOT NULL, 
	p50_ms FLOAT, 
	p95_ms FLOAT, 
	p99_ms FLOAT, 
	max_ms FLOAT, 
	CONSTRAINT pk_telemetry_rollups PRIMARY KEY (id), 
	CONSTRAINT uq_telemetry_rollups_resolution_s UNIQUE (resolution_s, device_id, model_id, version, bucket_start)
);
CREATE UNIQUE INDEX ix_models_name ON models (name);
CREATE INDEX ix_events_device_at ON events (device_id, at);
CREATE INDEX ix_telemetry_device_end ON telemetry (device_id, window_end);
CREATE INDEX ix_telemetry_version_end ON telemetry (model_id, version, window_end);
CREATE INDEX ix_system_device_end ON system_samples (device_id, window_end);
CREATE INDEX ix_rollouts_status ON rollouts (status);
CREATE INDEX ix_telemetry_rollups_res_bucket ON telemetry_rollups (resolution_s, bucket_start);
CREATE INDEX ix_system_rollups_res_bucket ON system_rollups (resolution_s, bucket_start);
CREATE INDEX ix_model_versions_model_id ON model_versions (model_id);
CREATE INDEX ix_rollout_devices_device_id ON rollout_devices (device_id);
CREATE INDEX ix_artifacts_sha256 ON artifacts (sha256);
CREATE INDEX ix_artifacts_version_id ON artifacts (version_id);
COMMIT;
