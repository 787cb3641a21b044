@queue @worker
Feature: Every conversation gets its turns one at a time, and conversations never mix
  The administrator thinks about one client's messages at a time: what the client writes meanwhile waits
  for the next turn. Clients writing at the same moment, or one client writing to two salons of a chain,
  are separate conversations.

  Scenario: A message sent while the administrator is thinking is answered in the next turn
    Given the administrator takes 5 seconds to think
    When the client 79001234567 writes "Хочу записаться на стрижку машинкой"
    And 10 seconds pass
    And the client 79001234567 writes "А сколько она стоит?"
    And the administrator answers the client 79001234567
    And the administrator answers the client 79001234567
    Then the administrator reads the turns
      | turn                                |
      | Хочу записаться на стрижку машинкой |
      | А сколько она стоит?                |
    And the second turn began only after the client 79001234567 got the first reply
    And the client 79001234567 gets 2 replies

  Scenario: Two clients writing at the same time get their own batches
    When the clients write at once
      | client      | message                    |
      | 79001234567 | Хочу записаться            |
      | 79007654321 | Сколько стоит              |
      | 79001234567 | на стрижку машинкой        |
      | 79007654321 | королевское бритьё?        |
      | 79001234567 | завтра в 15:00             |
    And 9 seconds pass
    Then the administrator reads the turns in any order
      | turn                                               |
      | Хочу записаться на стрижку машинкой завтра в 15:00 |
      | Сколько стоит королевское бритьё?                  |
    And the stats show 2 batches flushed with 5 fragments

  Scenario: One client writing to two salons has two conversations
    Given the chain has two salons, each with its own WhatsApp number
    When the client 79001234567 writes "Хочу записаться на стрижку машинкой" to the first salon
    And the client 79001234567 writes "Сколько стоит королевское бритьё?" to the second salon
    And the administrator answers the client 79001234567
    And 60 seconds pass
    Then the client 79001234567 gets 1 reply from the first salon
    And the client 79001234567 gets 1 reply from the second salon
    And the client 79001234567 has a conversation with each salon
    And no turn of the administrator mixes the two salons' messages
      | message                             |
      | Хочу записаться на стрижку машинкой |
      | Сколько стоит королевское бритьё?   |
