-- What a stream's readings are judged against besides the forecast: 'forecast' (nothing
-- else; the default) or 'warmup' (also each channel's median and spread over the warm-up).
ALTER TABLE streams ADD COLUMN baseline TEXT NOT NULL DEFAULT 'forecast';
