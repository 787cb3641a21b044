@batching
Feature: Quick messages are answered as one
  A client often writes in several quick fragments. The administrator waits until the client has been
  quiet for 9 seconds and then answers everything at once, as one turn; a long burst is cut at 10 messages.

  Scenario: Three quick messages become one turn
    When the client 79001234567 quickly writes
      | message             |
      | Хочу записаться     |
      | на стрижку машинкой |
      | завтра в 15:00      |
    And 9 seconds pass
    Then the administrator reads one turn "Хочу записаться на стрижку машинкой завтра в 15:00"
    And the stats show 1 batch flushed with 3 fragments

  @batcher
  Scenario: The batch is sent 9 seconds after the last message, not before
    When the client 79001234567 writes "Хочу записаться"
    And 5 seconds pass
    And the client 79001234567 writes "на стрижку машинкой"
    And 8.9 seconds pass
    Then the stats show 0 batches flushed
    When 0.1 seconds pass
    Then the stats show 1 batch flushed with 2 fragments

  Scenario: Eight quick messages make one batch
    When the client 79001234567 quickly writes 8 messages
    And 9 seconds pass
    Then the stats show 1 batch flushed with 8 fragments
    And the administrator reads 1 turn

  @batcher
  Scenario: Ten messages seal a batch at once and the eleventh starts the next
    When the client 79001234567 quickly writes 10 messages
    Then the stats show 1 batch flushed with 10 fragments
    When the client 79001234567 writes "и ещё одно"
    Then the stats show 1 open batch
    When 9 seconds pass
    Then the stats show 2 batches flushed with 11 fragments
    And the administrator reads 2 turns

  @batcher
  Scenario: Messages 10 seconds apart are separate turns
    When the client 79001234567 writes "Хочу записаться"
    And 10 seconds pass
    And the client 79001234567 writes "на стрижку машинкой"
    And 10 seconds pass
    Then the administrator reads the turns
      | turn                |
      | Хочу записаться     |
      | на стрижку машинкой |

  @realtime @batcher
  Scenario: The 9 s batch timeout holds on the wall clock against a real Redis
    Given the wall clock and a real Redis
    When the client 79001234567 quickly writes
      | message             |
      | Хочу записаться     |
      | на стрижку машинкой |
      | завтра в 15:00      |
    Then the batch is flushed between 9000 and 9100 ms after the last message
