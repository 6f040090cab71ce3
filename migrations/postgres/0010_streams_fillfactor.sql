-- Stream rows are updated by every commit that holds readings of their stream (`last_ts`,
-- the counts), 1,000 of them a commit at one reading of each of 1,000 streams a request.
-- At the default fill factor (100) pages have no room for a row's new version, so two
-- updates in three were not HOT: each wrote a new entry into both of the table's indexes
-- (its key and `name`) and left them to vacuum (docs/PERFORMANCE.md). Half of each page is
-- left free for new versions on the same page. Pages filled before this are not rewritten:
-- a row there moves at its next update to a page with that room (an update that does not
-- fit its page is placed by the fill factor too); `VACUUM FULL streams` rewrites them at once.
ALTER TABLE streams SET (fillfactor = 50);
